"""``hubert``, ``wavlm``, ``wav2vec2``: self-supervised speech encoders on raw 16 kHz waveforms, 50 frames/s.

The backbones are transformers' ``HubertModel``, ``WavLMModel`` and ``Wav2Vec2Model`` (``model.*`` here), built by
:mod:`hf_loading` from a checkpoint (strict), an inline config, or on the meta device. The input recipe is the
checkpoint's ``Wav2Vec2FeatureExtractor``: with ``do_normalize``, zero mean and unit variance per clip over its own
samples (epsilon 1e-7, so silence stays finite), padding kept at zero.

Padding never reaches a real frame:

- ``feat_extract_norm="layer"`` (large models): the conv feature encoder has no cross-time normalisation and a valid
  frame's receptive field ends inside the clip, so it runs batched; the sample mask goes to the transformer.
- ``feat_extract_norm="group"`` (hubert-base, wav2vec2-base, wavlm-base): its first layer's GroupNorm normalises
  over all time steps, padding included, and the originals take no attention mask. Here that conv stack runs on
  each clip's own samples (as the original run on one clip does), and the transformer still gets the mask.

Output: ``hidden [B, T, C]`` with ``T`` from the model's ``_get_feat_extract_output_lengths``, padded frames zeroed.
``layer="last"`` is the model's ``last_hidden_state``; an int ``i`` is transformers' ``hidden_states[i]``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model, WavLMConfig, WavLMModel

from slmzoo.components import Encoder, EncoderOutput, config_fields, lengths_to_mask, zero_padding
from slmzoo_plugins.encoders.hf_loading import build_hf_model, preprocessor_config
from slmzoo_plugins.encoders.layer_selection import LayerSelection
from slmzoo_plugins.encoders.waveforms import check_waveforms

NORM_EPSILON = 1e-7  # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm


def normalize_waveforms(audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per clip over its own samples; ``[B, S]`` -> ``[B, S]``, padding stays 0."""
    mask = lengths_to_mask(lengths, audio.shape[1]).to(audio.dtype)
    count = lengths.to(audio.dtype)[:, None]
    mean = (audio * mask).sum(1, keepdim=True) / count
    variance = (((audio - mean) * mask) ** 2).sum(1, keepdim=True) / count  # population variance, as numpy's var
    return (audio - mean) / torch.sqrt(variance + NORM_EPSILON) * mask


class PerClipConvFeatures(nn.Module):
    """Mixin over a transformers conv feature encoder: runs it on each clip's own samples.

    Set ``clip_lengths [B]`` before the call. ``[B, S]`` -> ``[B, C, T]`` zero-padded to the batch's frame count.
    The submodules (and so the state dict) stay those of the wrapped class.
    """

    clip_lengths: torch.Tensor | None = None

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        if self.clip_lengths is None:
            return super(PerClipConvFeatures, self).forward(input_values)
        clips = [super(PerClipConvFeatures, self).forward(input_values[i : i + 1, :n])
                 for i, n in enumerate(self.clip_lengths.tolist())]
        frames = max(clip.shape[-1] for clip in clips)
        return torch.cat([nn.functional.pad(clip, (0, frames - clip.shape[-1])) for clip in clips])


_PER_CLIP_CLASSES: dict[type, type] = {}


def run_conv_per_clip(feature_encoder: nn.Module) -> None:
    """Give ``feature_encoder`` (e.g. ``Wav2Vec2FeatureEncoder``) the forward of :class:`PerClipConvFeatures`."""
    base = type(feature_encoder)
    if base not in _PER_CLIP_CLASSES:
        _PER_CLIP_CLASSES[base] = type(f"PerClip{base.__name__}", (PerClipConvFeatures, base), {"__module__": __name__})
        globals()[_PER_CLIP_CLASSES[base].__name__] = _PER_CLIP_CLASSES[base]  # picklable by name
    feature_encoder.__class__ = _PER_CLIP_CLASSES[base]


class SSLEncoder(Encoder):
    """A wav2vec2-family encoder: ``audio [B, S]``, ``lengths [B]`` -> ``EncoderOutput(hidden [B, T, C], lengths [B])``.

    Subclasses set ``model_class`` and ``config_class``.
    """

    name = "ssl"
    model_class: type
    config_class: type
    sampling_rate = 16000

    def __init__(self, options, context=None):
        super().__init__()
        self.model = build_hf_model(self.model_class, self.config_class, pretrained=options.pretrained,
                                    config=options.config, context=context)
        config = self.model.config
        if getattr(config, "add_adapter", False):
            raise ValueError(f"{self.name}: checkpoints with add_adapter=True change the frame rate; not supported")
        if options.normalize is None:  # the checkpoint's own recipe; Wav2Vec2FeatureExtractor's default is True
            self.normalize = bool(preprocessor_config(options.pretrained, context).get("do_normalize", True))
        else:
            self.normalize = options.normalize
        if config.feat_extract_norm == "group":
            run_conv_per_clip(self.model.feature_extractor)
        self.num_layers = config.num_hidden_layers
        self.selection = LayerSelection(options.layer, self.num_layers)
        self.stacks_layers = self.selection.stacks_layers
        self.output_dim = config.hidden_size
        self.frame_rate = self.sampling_rate / math.prod(config.conv_stride)
        self.min_samples = receptive_field(config.conv_kernel, config.conv_stride)

    def standalone_options(self) -> dict:
        return {"config": config_fields(self.model.config), "normalize": self.normalize}

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Samples ``[B]`` -> frames ``[B]``, by the model's own formula."""
        return self.model._get_feat_extract_output_lengths(lengths).long()

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """``audio [B, S]`` zero-padded 16 kHz, ``lengths [B]`` samples -> ``[B, T, C]`` (or ``[B, L+1, T, C]``)."""
        lengths = check_waveforms(audio, lengths, self.min_samples, self.name)
        audio = audio[:, : int(lengths.max())].float()
        if self.normalize:
            audio = normalize_waveforms(audio, lengths)
        mask = lengths_to_mask(lengths, audio.shape[1]).long()
        feature_encoder = self.model.feature_extractor
        if isinstance(feature_encoder, PerClipConvFeatures):
            feature_encoder.clip_lengths = lengths
        try:
            out = self.model(audio, attention_mask=mask, output_hidden_states=self.selection.needs_all_states)
        finally:
            if isinstance(feature_encoder, PerClipConvFeatures):
                feature_encoder.clip_lengths = None
        frames = self.output_lengths(lengths)
        states = out.hidden_states if self.selection.needs_all_states else (out.last_hidden_state,)
        hidden = self.selection([zero_padding(state, frames) for state in states])
        return EncoderOutput(hidden=hidden, lengths=frames)


def receptive_field(kernels, strides) -> int:
    """Samples one output frame of a conv stack sees: the shortest clip that gives a frame."""
    field = 1
    for kernel, stride in reversed(list(zip(kernels, strides))):
        field = (field - 1) * stride + kernel
    return field


class HubertEncoder(SSLEncoder):
    name, model_class, config_class = "hubert", HubertModel, HubertConfig


class WavLMEncoder(SSLEncoder):
    name, model_class, config_class = "wavlm", WavLMModel, WavLMConfig


class Wav2Vec2Encoder(SSLEncoder):
    name, model_class, config_class = "wav2vec2", Wav2Vec2Model, Wav2Vec2Config
