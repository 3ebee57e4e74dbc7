"""``clap``: the audio tower of LAION CLAP (HTSAT; transformers ``ClapAudioModel``), as Pengi and Audio Flamingo use it.

Input is 48 kHz (``sampling_rate`` is the feature extractor's; the data pipeline resamples to it). Features as
``ClapFeatureExtractor``, in torch: every clip is brought to the fixed 10 s window (``padding``: ``repeatpad`` tiles
the clip ``int(max / n)`` times then zero-pads, ``repeat`` tiles and cuts, ``pad`` zero-pads), centred STFT (n_fft
1024, hop 480, periodic Hann, reflect padding), power, mel filters (HTK without norm for ``fusion``, Slaney for
``rand_trunc``, the same ``mel_filter_bank`` calls), ``10 log10(max(x, 1e-10))``.

Deterministic where the original draws at random (a clip's output never depends on chance or on its batch):

- ``truncation`` follows the model (``fusion`` when ``enable_fusion``, else ``rand_trunc``), since a model takes the
  channels its patch embedding was built for. Clips longer than the window: ``rand_trunc`` keeps the first 10 s
  (not a random crop); ``fusion`` takes its three local crops at the start of the front, middle and back thirds.
- ``fusion`` marks a random clip of a batch without long clips as "longer"; that batch-dependent draw is left out.

Output: ``frames`` are the last stage's states ``[B, C, f, t]`` reordered time-major ``[B, t * f, C]`` (for the
released models ``t = 32``, ``f = 2`` over the 10 s window: 6.4 tokens/s); ``lengths`` count the time steps that start
inside the clip's own audio, so the repeats and silence filling the window are dropped downstream. ``pooled`` is the
pooled audio embedding as one frame. Swin stages differ in width and resolution, so ``layer`` must be ``last``.

``normalize`` (not a ClapFeatureExtractor setting; default none, CLAP's): ``all_features`` normalises each clip's dB
log-mel by one mean and std over its own frames (before the repeats and the silence filling the window count), and
the tower's input ``batch_norm`` then keeps to its running statistics (a per-mel-bin affine from random weights) in
training too: for a tiny CLAP trained from scratch under the digits recipe's augmentation, the batch statistics of
the original left the model on the text prior (ultravox's pipeline on this encoder: dev loss 0.49 at step 300,
0.27 with this; per-clip normalisation alone, batch statistics kept: 0.50). No clip's features then depend on its
batch.

Weights: the audio tower of a ``ClapModel`` checkpoint (``audio_model.*``; the text tower, projections and logit
scales are dropped) or a bare ``ClapAudioModel`` (``audio_encoder.*``), strictly: a missing or unexpected audio weight
is an error that names it. The input ``batch_norm`` uses batch statistics in training mode, as the original.
"""

from __future__ import annotations

import numpy as np
import torch

from slmzoo.components import Encoder, EncoderOutput, config_fields, lengths_to_mask
from slmzoo_plugins.encoders.hf_loading import checkpoint_tensors, feature_settings, load_config, load_state_strict
from slmzoo_plugins.encoders.waveforms import check_waveforms

# ClapFeatureExtractor's defaults.
FEATURE_DEFAULTS = dict(feature_size=64, sampling_rate=48000, hop_length=480, max_length_s=10, fft_window_size=1024,
                        frequency_min=0.0, frequency_max=14000.0, top_db=None, truncation=None, padding="repeatpad",
                        normalize=None)
NORMALIZE = (None, "all_features")
OTHER_TOWERS = ("text_model.", "text_projection.", "audio_projection.", "logit_scale_a", "logit_scale_t")


def load_audio_tower(model: torch.nn.Module, pretrained: str) -> None:
    """Strictly load ``ClapAudioModel`` weights from a ``ClapModel`` or ``ClapAudioModel`` checkpoint."""
    state = checkpoint_tensors(pretrained)
    if any(k.startswith("audio_model.") for k in state):  # a ClapModel: keep the audio tower, drop the others
        state = {k.removeprefix("audio_model."): v for k, v in state.items() if not k.startswith(OTHER_TOWERS)}
    load_state_strict(model, state, pretrained, "ClapAudioModel")


class ClapEncoder(Encoder):
    """Waveforms ``[B, S]`` at 48 kHz -> CLAP audio states ``[B, t * f, C]`` (or the pooled embedding ``[B, 1, C]``)."""

    def __init__(self, options, context):
        super().__init__()
        from transformers import ClapAudioConfig, ClapAudioModel
        from transformers.audio_utils import mel_filter_bank

        config = load_config(ClapAudioConfig, options.pretrained, options.config, sub_config="audio_config")
        self.model = ClapAudioModel(config)
        if options.pretrained is not None and not context.from_config:
            load_audio_tower(self.model, options.pretrained)
        fe = {**FEATURE_DEFAULTS,
              **feature_settings(options.pretrained, options.feature_extractor, FEATURE_DEFAULTS, context)}
        fe["truncation"] = "fusion" if config.enable_fusion else "rand_trunc"
        self.fe, self.fusion = fe, config.enable_fusion
        if fe["padding"] not in ("repeatpad", "repeat", "pad"):  # from a checkpoint's preprocessor_config.json
            raise ValueError(f"encoder.feature_extractor.padding: {fe['padding']!r} (repeatpad, repeat, pad)")
        if fe["normalize"] not in NORMALIZE:
            raise ValueError(f"encoder.feature_extractor.normalize: {fe['normalize']!r} (all_features, or none)")
        self.normalize = fe["normalize"]
        self.sampling_rate = int(fe["sampling_rate"])
        self.max_samples = int(fe["max_length_s"] * fe["sampling_rate"])
        self.hop, self.n_fft = int(fe["hop_length"]), int(fe["fft_window_size"])
        filters = mel_filter_bank(num_frequency_bins=self.n_fft // 2 + 1, num_mel_filters=fe["feature_size"],
                                  min_frequency=fe["frequency_min"], max_frequency=fe["frequency_max"],
                                  sampling_rate=fe["sampling_rate"], **(dict(norm=None, mel_scale="htk") if self.fusion
                                                                         else dict(norm="slaney", mel_scale="slaney")))
        self.register_buffer("mel_filters", torch.from_numpy(filters).float(), persistent=False)
        self.output = options.output
        self.output_dim = config.hidden_size
        # The square spec_size image shrinks by patch_stride * 2 ** (stages - 1) to [steps, steps]; the encoder
        # regroups it into f = steps // freq_ratio frequency and t = steps * freq_ratio time positions.
        stride = config.patch_stride if isinstance(config.patch_stride, int) else config.patch_stride[1]
        steps = config.spec_size // stride // 2 ** (len(config.depths) - 1)
        freq_ratio = self.model.audio_encoder.freq_ratio
        self.time_steps, self.freq_steps = steps * freq_ratio, steps // freq_ratio
        window_s = fe["max_length_s"]
        self.frame_rate = self.time_steps * self.freq_steps / window_s if options.output == "frames" else 1 / window_s

    def standalone_options(self) -> dict:
        # truncation follows the model's enable_fusion, whatever the settings say
        return {"config": config_fields(self.model.config),
                "feature_extractor": {k: v for k, v in self.fe.items() if k != "truncation"}}

    def train(self, mode: bool = True):
        """Normalised features: the input BatchNorm stays on its running statistics (the module docstring)."""
        super().train(mode)
        if self.normalize:
            self.model.audio_encoder.batch_norm.eval()
        return self

    def _check(self, audio: torch.Tensor, lengths: torch.Tensor) -> None:
        check_waveforms(audio, lengths, self.n_fft // 2 + 1, "clap encoder", self.sampling_rate)

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """``wave [S]`` -> ``[frames, n_mels]`` dB mel, ``frames = 1 + S // hop``."""
        window = torch.hann_window(self.n_fft, periodic=True, device=wave.device)
        power = torch.stft(wave, self.n_fft, self.hop, window=window, center=True, pad_mode="reflect",
                           return_complex=True).abs().pow(2)
        mel = 10.0 * torch.log10(torch.clamp(self.mel_filters.float().T @ power, min=1e-10))
        if self.fe["top_db"] is not None:
            mel = torch.maximum(mel, mel.max() - self.fe["top_db"])
        return mel.T

    def clip_features(self, wave: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """One clip ``[n]`` -> ``input_features [channels, frames, n_mels]`` and ``is_longer``."""
        feats, is_longer = self._window_features(wave)
        if self.normalize:  # all_features: one mean and std over the frames of the clip's own audio
            own = feats[..., : max(2, 1 + min(wave.shape[0], self.max_samples) // self.hop), :]
            feats = (feats - own.mean()) / (own.std() + 1e-5)
        return feats, is_longer

    def _window_features(self, wave: torch.Tensor) -> tuple[torch.Tensor, bool]:
        n, max_n = wave.shape[0], self.max_samples
        if n > max_n and not self.fusion:
            return self.log_mel(wave[:max_n])[None], True
        if n > max_n:  # fusion: the whole clip shrunk to the window + three crops, each at the start of its third
            mel = self.log_mel(wave)
            chunk, total = max_n // self.hop + 1, mel.shape[0]
            if chunk == total:
                return mel[None].expand(4, -1, -1), False
            starts = [r[0] if len(r) else 0 for r in np.array_split(np.arange(total - chunk + 1), 3)]
            shrunk = torch.nn.functional.interpolate(mel[None, None], size=[chunk, mel.shape[1]], mode="bilinear",
                                                     align_corners=False)[0, 0]
            return torch.stack([shrunk] + [mel[s: s + chunk] for s in starts]), True
        if n < max_n and self.fe["padding"] != "pad":
            repeats = max_n // n + (1 if self.fe["padding"] == "repeat" else 0)
            wave = wave.repeat(repeats)[:max_n]
        wave = torch.nn.functional.pad(wave, (0, max_n - wave.shape[0]))
        mel = self.log_mel(wave)
        return (mel[None].expand(4, -1, -1) if self.fusion else mel[None]), False

    def features(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``audio [B, S]`` -> ``input_features [B, 1 or 4, frames, n_mels]`` float32, ``is_longer [B, 1]``."""
        clips = [self.clip_features(audio[b, :n].float()) for b, n in enumerate(lengths.tolist())]
        feats = torch.stack([c[0] for c in clips])
        return feats, torch.tensor([[c[1]] for c in clips], device=audio.device)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """``audio [B, S]``, ``lengths [B]`` samples -> ``hidden [B, t * f, C]`` (or ``[B, 1, C]`` pooled) and
        ``lengths [B]``; frames past ``lengths`` zeroed."""
        self._check(audio, lengths)
        feats, is_longer = self.features(audio, lengths)
        out = self.model(feats.to(self.model.audio_encoder.patch_embed.proj.weight.dtype), is_longer=is_longer)
        B = feats.shape[0]
        if self.output == "pooled":
            return EncoderOutput(hidden=out.pooler_output[:, None],
                                 lengths=torch.ones(B, dtype=torch.long, device=feats.device))
        grid = out.last_hidden_state  # [B, C, f, t]
        f, t = grid.shape[2], grid.shape[3]
        hidden = grid.permute(0, 3, 2, 1).reshape(B, t * f, -1)  # time-major: t * f + f_index
        # Time steps starting inside the clip's own audio (the window is resampled to t steps by HTSAT).
        covered = torch.clamp(lengths.to(feats.device), max=self.max_samples) * t
        steps = torch.clamp(-(-covered // self.max_samples), 1, t)
        out_lengths = steps * f
        hidden = hidden * lengths_to_mask(out_lengths, t * f)[..., None].to(hidden.dtype)
        return EncoderOutput(hidden=hidden, lengths=out_lengths)
