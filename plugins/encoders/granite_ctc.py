"""``granite_ctc``: the speech encoder of IBM Granite Speech, transformers' ``GraniteSpeechCTCEncoder`` (``model.*``).

A Conformer trained on its own with character-level CTC: input Linear, blocks of macaron feed-forward, block
attention (``context_size`` frames, Shaw relative positions), conv module and post-LayerNorm; after the middle block
the CTC head's softmax is projected back and added (self-conditioned CTC). The module is transformers' own, unchanged.

Features as ``GraniteSpeechFeatureExtractor``, computed in torch here (the extractor needs torchaudio): torchaudio's
``MelSpectrogram`` defaults with the extractor's settings (n_fft 512, win_length 400, hop 160, 80 mels): periodic
Hann window zero-padded to n_fft, centred STFT with reflect padding, power spectrum, HTK mel filters without
normalisation (torchaudio's ``melscale_fbanks`` arithmetic, in float32); then ``log10(max(mel, 1e-10))``, clamp to
8 below the clip's maximum, ``/ 4 + 1``; an odd last frame is dropped and pairs of frames are stacked:
``[T // 2, 2 * n_mels]`` (160 dims) at 50 frames/s. A clip of ``S`` samples gives ``(S // hop + 1) // 2`` frames,
the count the processor expands the audio tag from.

Padding: the encoder takes no attention mask (block attention sees the whole block, the depthwise conv pads with
zeros) and the ``max - 8`` clamp runs over the whole feature row, so a batch-padded row would change a clip's
output. The reference runs a clip alone; so does this encoder: features on each clip's own samples, and the
encoder over clips of equal frame counts stacked (no padding at all), each group once. The output is the same
alone or in any batch; padded frames are zeros. (In training mode the conv module's BatchNorm uses the statistics
of its group; in eval mode, its running ones.)

``layer``: ``hidden_states[i]`` is transformers' (0 = the input Linear's output); the middle block's state includes
the self-conditioning term, as the next block receives it.

Weights load strictly from a ``GraniteSpeechForConditionalGeneration`` checkpoint (``encoder.*`` as released,
``model.encoder.*`` as transformers names it; the projector and LLM stay on disk) or a bare
``GraniteSpeechCTCEncoder``. From the hub only the safetensors shards holding encoder weights are downloaded.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from slmzoo.builder import context_or_default
from slmzoo.components import Encoder, EncoderOutput, config_fields
from slmzoo_plugins.encoders.hf_loading import (
    feature_settings,
    load_config,
    load_state_strict,
    preprocessor_config,
    tower_tensors,
)
from slmzoo_plugins.encoders.layer_selection import LayerSelection
from slmzoo_plugins.encoders.waveforms import check_waveforms

# GraniteSpeechFeatureExtractor's defaults (n_mels follows the encoder's input_dim: two stacked frames).
FEATURE_DEFAULTS = dict(sampling_rate=16000, n_fft=512, win_length=400, hop_length=160)
FEATURE_KEYS = (*FEATURE_DEFAULTS, "n_mels")
LOG_FLOOR = 1e-10  # clip_(min=1e-10) before log10
DYNAMIC_RANGE = 8.0  # log10 units kept below the clip's maximum
ENCODER_PREFIXES = ("model.encoder.", "encoder.")  # transformers' names, the released checkpoints' names
BARE_ENCODER = ("input_linear.", "layers.", "out.", "out_mid.")  # a GraniteSpeechCTCEncoder saved on its own


def torchaudio_mel_filters(n_freqs: int, n_mels: int, sampling_rate: int) -> torch.Tensor:
    """``[n_freqs, n_mels]`` float32: ``torchaudio.functional.melscale_fbanks`` as ``MelSpectrogram`` calls it (f_min 0,
    f_max ``sampling_rate // 2``, HTK scale, no normalisation), step by step in float32 as torchaudio computes it.

    ``transformers.audio_utils.mel_filter_bank(..., mel_scale="htk")`` draws the same triangles in float64; the
    float32 rounding of the upper mel points moves weights by up to 5e-6, so torchaudio's own arithmetic is kept.
    """
    def hz_to_mel(freq: float) -> float:
        return 2595.0 * math.log10(1.0 + freq / 700.0)

    all_freqs = torch.linspace(0, sampling_rate // 2, n_freqs, device="cpu")
    mel_points = torch.linspace(hz_to_mel(0.0), hz_to_mel(float(sampling_rate // 2)), n_mels + 2, device="cpu")
    hz_points = 700.0 * (10.0 ** (mel_points / 2595.0) - 1.0)
    widths = hz_points[1:] - hz_points[:-1]
    slopes = hz_points.unsqueeze(0) - all_freqs.unsqueeze(1)  # [n_freqs, n_mels + 2]
    down, up = -1.0 * slopes[:, :-2] / widths[:-1], slopes[:, 2:] / widths[1:]
    return torch.max(torch.zeros(1, device="cpu"), torch.min(down, up))


class GraniteLogMel(nn.Module):
    """One clip ``audio [S]`` -> stacked log-mel ``[(S // hop + 1) // 2, 2 * n_mels]`` float32.

    Always one clip: the clamp to ``max - 8`` is over the clip's own frames, and the reflect padding of the centred
    STFT must mirror the clip's own end, not batch padding.
    """

    def __init__(self, sampling_rate=16000, n_fft=512, win_length=400, hop_length=160, n_mels=80):
        super().__init__()
        self.n_fft, self.win_length, self.hop_length, self.n_mels = n_fft, win_length, hop_length, n_mels
        # A plain attribute, not a buffer: a module-wide .to(bfloat16) must not round the filters.
        self.filters = torchaudio_mel_filters(n_fft // 2 + 1, n_mels, sampling_rate)  # [n_freqs, n_mels]

    @property
    def min_samples(self) -> int:
        """Reflect padding needs more than ``n_fft // 2`` samples; one output frame needs two mel frames."""
        return max(self.n_fft // 2 + 1, self.hop_length)

    def num_frames(self, samples: torch.Tensor) -> torch.Tensor:
        """Output frames for ``samples [B]``: centred STFT frames, halved by the stacking."""
        return torch.div(torch.div(samples, self.hop_length, rounding_mode="floor") + 1, 2, rounding_mode="floor")

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        audio = audio.float()
        window = torch.hann_window(self.win_length, device=audio.device)  # periodic, as torchaudio's default
        stft = torch.stft(audio, self.n_fft, hop_length=self.hop_length, win_length=self.win_length, window=window,
                          center=True, pad_mode="reflect", return_complex=True)  # [n_freqs, T]
        power = stft.abs().pow(2.0)
        mel = power.transpose(-1, -2) @ self.filters.to(audio.device)  # [T, n_mels], torchaudio's MelScale order
        log_mel = mel.clamp(min=LOG_FLOOR).log10()
        log_mel = torch.maximum(log_mel, log_mel.amax() - DYNAMIC_RANGE) / 4 + 1
        frames = log_mel.shape[0] // 2 * 2  # an odd last frame is dropped
        return log_mel[:frames].reshape(frames // 2, 2 * self.n_mels)


def encoder_state(pretrained: str) -> dict[str, torch.Tensor]:
    """``GraniteSpeechCTCEncoder`` state dict from a whole-model or a bare-encoder checkpoint (folder or hub id:
    from the hub only the shards holding encoder weights are downloaded)."""
    return tower_tensors(pretrained, ENCODER_PREFIXES, BARE_ENCODER)


def saved_feature_settings(pretrained: str | None, context) -> dict:
    """The checkpoint's extractor settings: top-level keys or torchaudio's ``melspec_kwargs`` (``sample_rate``)."""
    saved = preprocessor_config(pretrained, context)
    nested = dict(saved.get("melspec_kwargs") or {})
    if "sample_rate" in nested:
        nested["sampling_rate"] = nested.pop("sample_rate")
    return {k: v for k, v in {**saved, **nested}.items() if k in FEATURE_KEYS}


class GraniteCTCEncoder(Encoder):
    """``audio [B, S]``, ``lengths [B]`` -> ``EncoderOutput(hidden [B, T, C], lengths [B])`` at 50 frames/s."""

    name = "granite_ctc encoder"

    def __init__(self, options, context=None):
        super().__init__()
        from transformers import GraniteSpeechCTCEncoder, GraniteSpeechEncoderConfig

        context = context_or_default(context)
        from_config = context.from_config
        source = None if from_config and options.config is not None else options.pretrained
        config = load_config(GraniteSpeechEncoderConfig, source, options.config, sub_config="encoder_config")
        self.model = GraniteSpeechCTCEncoder(config)
        if context.meta:
            self.model.to("meta")
        elif source is not None and not from_config:
            load_state_strict(self.model, encoder_state(source), source, "GraniteSpeechCTCEncoder")
        if options.feature_extractor is not None:
            saved = feature_settings(None, options.feature_extractor, FEATURE_KEYS)
        else:
            saved = saved_feature_settings(options.pretrained, context)
        settings = {**FEATURE_DEFAULTS, "n_mels": config.input_dim // 2, **saved}
        if 2 * settings["n_mels"] != config.input_dim:
            raise ValueError(f"encoder.feature_extractor: n_mels={settings['n_mels']} stacked in pairs gives "
                             f"{2 * settings['n_mels']} features, but encoder.config.input_dim is {config.input_dim}: "
                             f"set n_mels to {config.input_dim / 2:g} or input_dim to {2 * settings['n_mels']}")
        self.features, self.feature_settings = GraniteLogMel(**settings), settings
        self.sampling_rate = settings["sampling_rate"]
        self.frame_rate = self.sampling_rate / settings["hop_length"] / 2  # 100 mel frames/s stacked in pairs
        self.output_dim = config.hidden_dim
        self.num_layers = config.num_layers
        self.selection = LayerSelection(options.layer, self.num_layers)
        self.stacks_layers = self.selection.stacks_layers

    def standalone_options(self) -> dict:
        return {"config": config_fields(self.model.config), "feature_extractor": dict(self.feature_settings)}

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """``audio [B, S]`` zero-padded, ``lengths [B]`` samples -> ``hidden [B, T, C]`` (``[B, L+1, T, C]`` for
        ``layer: all``), frames past ``lengths [B]`` zero. Clips with equal frame counts run as one batch."""
        lengths = check_waveforms(audio, lengths, self.features.min_samples, self.name, self.sampling_rate,
                                  unit="two mel frames (one output frame)")
        features = [self.features(audio[i, :n]) for i, n in enumerate(lengths.tolist())]  # [T_i, 2 * n_mels]
        frames = torch.tensor([len(f) for f in features], device=audio.device)
        dtype = self.model.input_linear.weight.dtype
        keep_all = self.selection.needs_all_states
        states = None  # L + 1 (or 1) tensors [B, T_max, C], filled group by group
        for count in sorted(set(frames.tolist())):
            group = [i for i, f in enumerate(features) if len(f) == count]
            out = self.model(torch.stack([features[i] for i in group]).to(dtype), output_hidden_states=keep_all)
            group_states = out.hidden_states if keep_all else (out.last_hidden_state,)
            if states is None:
                states = [s.new_zeros(len(features), int(frames.max()), s.shape[-1]) for s in group_states]
            index = torch.tensor(group, device=audio.device)
            # index_put (not in-place slicing of a leaf) keeps the autograd graph for a trained encoder
            states = [s.index_put((index,), nn.functional.pad(g, (0, 0, 0, s.shape[1] - count)))
                      for s, g in zip(states, group_states)]
        return EncoderOutput(hidden=self.selection(states), lengths=frames)
