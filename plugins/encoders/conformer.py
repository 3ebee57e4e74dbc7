"""``conformer``: Conformer speech encoders, by ``variant``.

- ``fastconformer``: NVIDIA's FastConformer as transformers' ``ParakeetEncoder`` (``model.*`` here), on NeMo-style
  log-mel features computed in torch exactly as ``ParakeetFeatureExtractor`` does: pre-emphasis, centred STFT
  (zero padding, hann window ``periodic=False``), power spectrum, slaney mels, ``log(mel + 2**-24)``, then per-clip,
  per-feature mean/std over the clip's own frames. 8x conv subsampling: 12.5 frames/s. Loads from a bare encoder or
  a ``ParakeetForCTC`` / ``ParakeetForTDT`` checkpoint (its decoder and heads are dropped).

  Training from scratch (no ``pretrained``): transformers' ``_init_weights`` (normal, std 0.02, zero bias) is meant
  for fine-tuning; on the depthwise-striding subsampling (3x3 convs of fan-in 9) it shrinks the log-mel ~30x per
  conv, so the subsampled frames are ~1e-3 (4x) or ~1e-5 (8x) rms even after the sqrt(d_model) x-scaling: below the
  LayerNorm epsilon, and the encoder output carries no audio. Random encoders therefore start the subsampling from
  He init (ReLU convs, zero biases), its frames at about unit rms before the x-scaling (``init_subsampling``).
  ``feature_extractor.normalize: all_features`` (NeMo's preprocessor option) normalises each clip with one mean/std
  over all its frames and mel bins instead of one per mel bin: on 1-2 s clips the per-bin statistics vary with the
  clip's words, and a tiny FastConformer trained from scratch through an LLM (the digits corpus) learns from the
  audio only with it.
- ``wav2vec2_conformer``: transformers' ``Wav2Vec2ConformerModel`` on waveforms, like the ``wav2vec2`` encoder.
  Its convolution modules do not mask padding (the depthwise conv would pull padded frames into real ones), so the
  depthwise input is zeroed on padded frames here, as FastConformer does.

Every clip's output is the same alone or in any batch (inference mode; training-mode BatchNorm uses batch stats).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import ParakeetEncoder, ParakeetEncoderConfig, Wav2Vec2ConformerConfig, Wav2Vec2ConformerModel

from slmzoo.builder import context_or_default
from slmzoo.components import Encoder, EncoderOutput, config_fields, lengths_to_mask, zero_padding
from slmzoo_plugins.encoders.hf_loading import build_hf_model, feature_settings, load_state_strict
from slmzoo_plugins.encoders.layer_selection import LayerSelection
from slmzoo_plugins.encoders.nemo_checkpoint import is_nemo_file, read_nemo_config, read_nemo_encoder_state
from slmzoo_plugins.encoders.ssl import SSLEncoder
from slmzoo_plugins.encoders.streaming import (ChannelLayerNorm, limit_context, make_convolutions_causal,
                                                 make_subsampling_causal)
from slmzoo_plugins.encoders.waveforms import check_waveforms

LOG_ZERO_GUARD = 2**-24  # ParakeetFeatureExtractor: LOG_ZERO_GUARD_VALUE
NORM_EPSILON = 1e-5  # ParakeetFeatureExtractor: EPSILON, added to the std
# The ParakeetFeatureExtractor settings the log-mel front end follows (others in a preprocessor config are moot).
FEATURE_KEYS = ("feature_size", "sampling_rate", "hop_length", "n_fft", "win_length", "preemphasis", "normalize",
                "filterbank")
# NeMo's preprocessor `normalize` (ParakeetFeatureExtractor: per_feature); NA, none: what streaming encoders use, since
# a statistic over the clip makes every frame depend on the whole clip.
NORMALIZE = ("per_feature", "all_features", "NA")
# `filterbank: stored`: the mel filters and the window are weights (a NeMo checkpoint's `featurizer.fb` / `window`,
# stored in bf16; recomputed float32 filters differ enough to change what canary-qwen decodes).
FILTERBANKS = ("computed", "stored")


class ParakeetLogMel(nn.Module):
    """``audio [B, S]``, ``lengths [B]`` -> normalised log-mel ``[B, T, n_mels]`` zero on padding, ``lengths [B]``.

    Batched, yet each clip's features depend on its own samples only: the STFT frames counted valid end at most
    ``n_fft / 2 - hop`` samples past the clip, where both the batch padding and the clip's own centring pad are 0.
    """

    def __init__(self, feature_size=80, sampling_rate=16000, hop_length=160, n_fft=512, win_length=400,
                 preemphasis=0.97, normalize="per_feature", filterbank="computed", **_):
        super().__init__()
        from transformers.audio_utils import mel_filter_bank

        if normalize not in NORMALIZE:
            raise ValueError(f"encoder.feature_extractor.normalize: {normalize!r}; use one of {', '.join(NORMALIZE)}")
        if filterbank not in FILTERBANKS:
            raise ValueError(f"encoder.feature_extractor.filterbank: {filterbank!r}; use one of "
                             f"{', '.join(FILTERBANKS)}")
        self.hop_length, self.n_fft, self.win_length, self.preemphasis = hop_length, n_fft, win_length, preemphasis
        self.normalize = normalize
        filters = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=feature_size, min_frequency=0.0,
                                  max_frequency=sampling_rate / 2, sampling_rate=sampling_rate, norm="slaney",
                                  mel_scale="slaney", dtype=np.float32)
        # Computed: derived from the settings, never a weight to save or load. Stored: weights of the checkpoint.
        stored = filterbank == "stored"
        self.register_buffer("mel_filters", torch.from_numpy(np.ascontiguousarray(filters.T)), persistent=stored)
        if stored:
            self.register_buffer("window", torch.hann_window(win_length, periodic=False))
        else:
            self.window = None

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths + self.n_fft // 2 * 2 - self.n_fft, self.hop_length, rounding_mode="floor")

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # float32, or float64 in a float64 model (exact batch invariance in tests); never half precision
        dtype = torch.float64 if self.mel_filters.dtype == torch.float64 else torch.float32
        audio = audio.to(dtype) * lengths_to_mask(lengths, audio.shape[1])
        if self.preemphasis:
            audio = torch.cat([audio[:, :1], audio[:, 1:] - self.preemphasis * audio[:, :-1]], dim=1)
            audio = audio * lengths_to_mask(lengths, audio.shape[1])
        window = torch.hann_window(self.win_length, periodic=False, device=audio.device, dtype=audio.dtype) \
            if self.window is None else self.window.to(audio.dtype)
        stft = torch.stft(audio, self.n_fft, hop_length=self.hop_length, win_length=self.win_length, window=window,
                          return_complex=True, pad_mode="constant")
        power = torch.view_as_real(stft).pow(2).sum(-1).sqrt().pow(2)  # the reference's exact op order
        features = torch.log(self.mel_filters.to(power.device, power.dtype) @ power + LOG_ZERO_GUARD).transpose(1, 2)
        frames = self.output_lengths(lengths)
        mask = lengths_to_mask(frames, features.shape[1])[..., None]
        if self.normalize == "NA":
            return (features * mask)[:, : int(frames.max())], frames
        dims = (1,) if self.normalize == "per_feature" else (1, 2)  # all_features: one mean/std per clip
        count = frames[:, None, None].to(features.dtype) * (1 if self.normalize == "per_feature" else features.shape[2])
        mean = (features * mask).sum(dims, keepdim=True) / count
        variance = (((features * mask) - mean) ** 2 * mask).sum(dims, keepdim=True) / (count - 1)
        features = (features - mean) / (variance.sqrt() + NORM_EPSILON) * mask
        # The centred STFT has one frame more than the extractor counts valid; it is zero here, drop it.
        return features[:, : int(frames.max())], frames


def init_subsampling(subsampling: nn.Module) -> None:
    """He init of the depthwise-striding subsampling (every conv leads to a ReLU), zero biases, and an output Linear
    of std ``1/sqrt(fan_in)``: unit-rms frames, which the x-scaling then multiplies by ``sqrt(d_model)`` as in NeMo.

    Not an output Linear divided by ``sqrt(d_model)`` to cancel the x-scaling (unit frames into the first block, this
    init's first version): its weights were then ``sqrt(d_model)`` times smaller for the same Adam steps, ~10x the
    relative update at width 96, and every tiny FastConformer model learned from its audio far slower (digits recipe,
    dev loss at step 600: salm 0.29 against 0.094 with this init, bestow 0.38 against 0.25)."""
    for module in subsampling.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=module.in_features**-0.5)
            nn.init.zeros_(module.bias)


class FastConformerEncoder(Encoder):
    """``audio [B, S]``, ``lengths [B]`` -> ``EncoderOutput(hidden [B, T, C], lengths [B])``, 12.5 frames/s."""

    name = "conformer"
    sampling_rate = 16000

    def __init__(self, options, context=None):
        super().__init__()
        if is_nemo_file(options.pretrained):  # a NeMo checkpoint (canary, parakeet): its config and weights
            fields, saved = read_nemo_config(options.pretrained)
            if options.feature_extractor is not None:
                saved = feature_settings(None, options.feature_extractor, FEATURE_KEYS)
            self.model = build_hf_model(ParakeetEncoder, ParakeetEncoderConfig,
                                        config={**fields, **(options.config or {})}, context=context)
            if not context_or_default(context).from_config:
                load_state_strict(self.model, read_nemo_encoder_state(options.pretrained), options.pretrained,
                                  "ParakeetEncoder")
        else:
            self.model = build_hf_model(ParakeetEncoder, ParakeetEncoderConfig, pretrained=options.pretrained,
                                        config=options.config, context=context, sub_config="encoder_config")
            saved = feature_settings(options.pretrained, options.feature_extractor, FEATURE_KEYS, context)
        if options.causal_downsampling:
            make_subsampling_causal(self.model)
        if options.pretrained is None:  # random weights, to be trained: see the module docstring
            init_subsampling(self.model.subsampling)
        config = self.model.config
        if options.conv_norm == "layernorm":
            for layer in self.model.layers:
                layer.conv.norm = ChannelLayerNorm(config.hidden_size)
        if options.causal_convolutions:
            make_convolutions_causal(self.model.layers)
        self.att_context_size = options.att_context_size
        settings = {"feature_size": config.num_mel_bins, **{k: v for k, v in saved.items() if k in FEATURE_KEYS}}
        if settings.get("sampling_rate", 16000) != 16000 or settings["feature_size"] != config.num_mel_bins:
            raise ValueError(f"{self.name}: feature extractor settings {settings} do not fit the encoder "
                             f"(16 kHz, {config.num_mel_bins} mel bins)")
        self.features, self.feature_settings = ParakeetLogMel(**settings), settings
        self.num_layers = config.num_hidden_layers
        self.selection = LayerSelection(options.layer, self.num_layers)
        self.stacks_layers = self.selection.stacks_layers
        self.output_dim = config.hidden_size
        self.frame_rate = self.sampling_rate / self.features.hop_length / config.subsampling_factor
        # The per-feature std divides by (frames - 1): a clip needs two feature frames.
        self.min_samples = 2 * self.features.hop_length + self.features.n_fft - self.features.n_fft // 2 * 2

    def standalone_options(self) -> dict:
        return {"config": config_fields(self.model.config), "feature_extractor": dict(self.feature_settings)}

    def _limited_context_states(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``ParakeetEncoder.forward`` with the chunked-limited attention mask (it builds a full-context one
        inside): the embeddings' and every layer's states."""
        model = self.model
        hidden = model.subsampling(features, mask) * model.input_scale
        positions = model.encode_positions(hidden)
        hidden = nn.functional.dropout(hidden, p=model.dropout, training=self.training)
        positions = nn.functional.dropout(positions, p=model.dropout_positions, training=self.training)
        frames = model._get_output_attention_mask(mask, target_length=hidden.shape[1])
        attention = limit_context((frames[:, None, :] & frames[:, :, None])[:, None], self.att_context_size)
        states = [hidden]
        for layer in model.layers:
            if not (self.training and model.layerdrop > 0.0 and torch.rand([]) < model.layerdrop):
                hidden = layer(hidden, attention_mask=attention, position_embeddings=positions)
            states.append(hidden)
        return tuple(states) if self.selection.needs_all_states else (hidden,)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """``audio [B, S]`` zero-padded 16 kHz, ``lengths [B]`` samples -> ``[B, T, C]`` (or ``[B, L+1, T, C]``)."""
        lengths = check_waveforms(audio, lengths, self.min_samples, self.name)
        features, feature_lengths = self.features(audio[:, : int(lengths.max())], lengths)
        mask = lengths_to_mask(feature_lengths, features.shape[1]).long()
        features = features.to(self.model.subsampling.linear.weight.dtype)
        if self.att_context_size is None:
            out = self.model(features, attention_mask=mask, output_hidden_states=self.selection.needs_all_states)
            states = out.hidden_states if self.selection.needs_all_states else (out.last_hidden_state,)
        else:
            states = self._limited_context_states(features, mask)
        frames = self.model._get_subsampling_output_length(feature_lengths).long()
        hidden = self.selection([zero_padding(state, frames) for state in states])
        return EncoderOutput(hidden=hidden, lengths=frames)


class MaskedDepthwiseConv1d(nn.Conv1d):
    """A depthwise conv that zeroes its input on padded frames first (``frame_mask [B, 1, T]``, set per batch).

    The mask stays set after the forward: activation checkpointing reruns this conv during backward.
    """

    frame_mask: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.frame_mask is not None:
            if self.frame_mask.shape[::2] != hidden.shape[::2]:
                raise RuntimeError(f"frame mask {list(self.frame_mask.shape)} does not fit {list(hidden.shape)}: "
                                   "call the conformer encoder, not its model directly")
            hidden = hidden * self.frame_mask.to(hidden.dtype)
        return super().forward(hidden)


class Wav2Vec2ConformerEncoder(SSLEncoder):
    """``Wav2Vec2ConformerModel`` as an :class:`SSLEncoder`, its conv modules masked."""

    name, model_class, config_class = "conformer", Wav2Vec2ConformerModel, Wav2Vec2ConformerConfig

    def __init__(self, options, context=None):
        super().__init__(options, context)
        for layer in self.model.encoder.layers:
            layer.conv_module.depthwise_conv.__class__ = MaskedDepthwiseConv1d  # same weights, masked input

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        frames = self.output_lengths(check_waveforms(audio, lengths, self.min_samples, self.name))
        frame_mask = lengths_to_mask(frames, int(frames.max()))[:, None, :]
        for layer in self.model.encoder.layers:
            layer.conv_module.depthwise_conv.frame_mask = frame_mask
        return super().forward(audio, lengths)


def Conformer(options, context=None) -> Encoder:
    """The ``conformer`` factory: picks the implementation by ``options.variant``."""
    if options.variant == "fastconformer":
        return FastConformerEncoder(options, context)
    return Wav2Vec2ConformerEncoder(options, context)
