"""``ast``: the Audio Spectrogram Transformer (Gong et al. 2021; transformers ``ASTModel``), as LTU and GAMA use it.

Features as ``ASTFeatureExtractor``: Kaldi fbank of the waveform as given (no ``2**15`` scaling there), symmetric
Hann window, ``num_mel_bins`` bins, 25/10 ms; padded with zeros or cut to ``max_length`` frames (1024 = 10.24 s);
normalised ``(x - mean) / (2 * std)``. Computed in torch on the encoder's device (``kaldi_fbank.py``).

AST's learned position embeddings cover a fixed grid of patches, so every clip is padded to the full window exactly
as the original and all patches attend to each other, the padded part of the window included: that is the input the
model was trained on. Batch padding never reaches the model (each clip is padded on its own), so a clip's output is
the same alone or in any batch. Longer clips are cut to the window, as the feature extractor does.

Output (``output``), with ``t`` time and ``f`` frequency patches (``t = 101``, ``f = 12`` for the released models,
patches 16x16 with stride 10):

- ``patches``: every patch token, reordered time-major (``[B, t * f, C]``; transformers orders them frequency-major),
  ``f * 100 / time_stride`` tokens per second; ``lengths`` count the time steps whose patches start inside the clip.
- ``frames``: patches averaged over frequency, ``[B, t, C]`` at ``100 / time_stride`` frames per second.
- ``pooled``: ``(CLS + distillation) / 2`` (``ASTModel``'s pooler output) as one frame, ``lengths`` 1.

Weights load strictly through ``hf_loading`` from an ``ASTModel`` or ``ASTForAudioClassification`` checkpoint (the
classifier head of the latter is dropped).
"""

from __future__ import annotations

import torch

from slmzoo.components import Encoder, EncoderOutput, config_fields, lengths_to_mask
from slmzoo_plugins.encoders.hf_loading import build_hf_model, feature_settings
from slmzoo_plugins.encoders.kaldi_fbank import fbank, num_frames
from slmzoo_plugins.encoders.layer_selection import LayerSelection
from slmzoo_plugins.encoders.waveforms import SAMPLING_RATE, check_waveforms

FRAMES_PER_SECOND = 100  # 10 ms fbank shift
# ASTFeatureExtractor's defaults (AudioSet statistics).
FEATURE_DEFAULTS = dict(num_mel_bins=128, max_length=1024, do_normalize=True, mean=-4.2677393, std=4.5689974)


class ASTEncoder(Encoder):
    """Waveforms ``[B, S]`` at 16 kHz -> AST patch states ``[B, t * f, C]`` (or per-time frames, or one pooled)."""

    sampling_rate = SAMPLING_RATE

    def __init__(self, options, context):
        super().__init__()
        from transformers import ASTConfig, ASTModel

        self.model = build_hf_model(ASTModel, ASTConfig, pretrained=options.pretrained, config=options.config,
                                    context=context)
        config = self.model.config
        saved = feature_settings(options.pretrained, options.feature_extractor, FEATURE_DEFAULTS, context)
        # Without a preprocessor config the grid's own sizes apply (the extractor's 128 x 1024 defaults are AST's).
        grid = {"num_mel_bins": config.num_mel_bins, "max_length": config.max_length}
        self.features_config = {**FEATURE_DEFAULTS, **grid, **saved}
        # The model's grid decides the window: a feature extractor disagreeing with it could not run at all.
        for key in ("num_mel_bins", "max_length"):
            if self.features_config[key] != getattr(config, key):
                raise ValueError(f"encoder.pretrained: preprocessor {key}={self.features_config[key]} does not match "
                                 f"the model's {key}={getattr(config, key)}")
        self.output = options.output
        self.freq_patches, self.time_patches = self.model.embeddings.get_shape(config)
        self.time_stride, self.max_length = config.time_stride, config.max_length
        self.output_dim = config.hidden_size
        time_rate = FRAMES_PER_SECOND / config.time_stride
        self.frame_rate = {"patches": time_rate * self.freq_patches, "frames": time_rate,
                           "pooled": FRAMES_PER_SECOND / config.max_length}[options.output]
        self.selection = LayerSelection(options.layer, config.num_hidden_layers)
        self.stacks_layers = self.selection.stacks_layers

    def standalone_options(self) -> dict:
        return {"config": config_fields(self.model.config), "feature_extractor": dict(self.features_config)}

    def _check(self, audio: torch.Tensor, lengths: torch.Tensor) -> None:
        check_waveforms(audio, lengths, 400, "ast encoder", unit="one 25 ms fbank frame")

    def features(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``audio [B, S]`` -> ``input_values [B, max_length, num_mel_bins]`` float32 and clip frames ``[B]``
        (capped at ``max_length``). Frames past a clip are the feature extractor's zero padding."""
        cfg = self.features_config
        frames = num_frames(lengths).clamp(max=self.max_length)
        waves = audio[:, : int(lengths.max())].float() * lengths_to_mask(lengths)
        feats = fbank(waves, num_mel_bins=cfg["num_mel_bins"], sample_rate=SAMPLING_RATE, window_type="hanning")
        window = feats.new_zeros(feats.shape[0], self.max_length, feats.shape[-1])
        n = min(self.max_length, feats.shape[1])
        window[:, :n] = feats[:, :n] * lengths_to_mask(frames, n)[..., None]
        if cfg["do_normalize"]:
            window = (window - cfg["mean"]) / (cfg["std"] * 2)
        return window, frames

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """``audio [B, S]``, ``lengths [B]`` samples -> ``hidden [B, T, C]`` (``[B, L+1, T, C]`` for ``layer: all``)
        and ``lengths [B]`` as described in the module docstring; frames past ``lengths`` zeroed."""
        self._check(audio, lengths)
        values, frames = self.features(audio, lengths)
        keep = self.selection.needs_all_states
        out = self.model(values.to(self.model.embeddings.cls_token.dtype), output_hidden_states=keep)
        # hidden_states[-1] is before the final layernorm; last_hidden_state (what the pooler uses) after it.
        states = list(out.hidden_states[:-1]) + [out.last_hidden_state] if keep else [out.last_hidden_state]
        hidden = self.selection(states)  # [B, 2 + f * t, C] or [B, L+1, 2 + f * t, C]
        B = hidden.shape[0]
        if self.output == "pooled":
            return EncoderOutput(hidden=(hidden[..., 0:1, :] + hidden[..., 1:2, :]) / 2,
                                 lengths=torch.ones(B, dtype=torch.long, device=hidden.device))
        grid = hidden[..., 2:, :].unflatten(-2, (self.freq_patches, self.time_patches))  # [..., f, t, C]
        steps = torch.clamp(torch.div(frames + self.time_stride - 1, self.time_stride, rounding_mode="floor"),
                            1, self.time_patches)  # time patches starting inside the clip
        if self.output == "frames":
            hidden, out_lengths = grid.mean(dim=-3), steps
        else:
            hidden = grid.transpose(-3, -2).flatten(-3, -2)  # time-major: t * f + f_index
            out_lengths = steps * self.freq_patches
        mask = lengths_to_mask(out_lengths, hidden.shape[-2]).to(hidden.dtype)
        hidden = hidden * (mask[:, None, :, None] if hidden.dim() == 4 else mask[..., None])
        return EncoderOutput(hidden=hidden, lengths=out_lengths)

