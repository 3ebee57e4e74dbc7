"""NeMo's streaming Conformer options, for the layers of transformers' ``ParakeetEncoderBlock``: chunked-limited
self-attention (``att_context_style: chunked_limited``, ``att_context_size [left, right]``) and causal depthwise
convolutions (``conv_context_size: causal``). Offline they give what NeMo's cache-aware streaming encoder computes
chunk by chunk (its limited look-ahead is the point); the cache itself is not needed to train or to decode whole
clips. Used by the ``conformer`` encoder and the ``conformer_adapter``.
"""

from __future__ import annotations

import torch
from torch import nn


def chunked_limited_mask(frames: int, left: int, right: int, device=None) -> torch.Tensor:
    """``[T, T]`` True where query frame i may attend key frame j (NeMo ``ConformerEncoder._create_masks``): frames
    fall into chunks of ``right + 1``; a query sees its own chunk and ``left // (right + 1)`` chunks before it.
    ``left < 0``: every chunk before."""
    chunk = torch.arange(frames, device=device) // (right + 1)
    behind = chunk[:, None] - chunk[None, :]
    allowed = behind >= 0
    if left >= 0:
        allowed &= behind <= left // (right + 1)
    return allowed


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of ``[B, C, T]`` (NeMo's ``conv_norm_type: layer_norm``), frame by frame."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden.transpose(1, 2)).transpose(1, 2)


class CausalDepthwiseConv1d(nn.Conv1d):
    """A depthwise conv padded on the left only (``kernel - 1`` frames): a frame never sees the future."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        left = (self.kernel_size[0] - 1) * self.dilation[0]
        return self._conv_forward(nn.functional.pad(hidden, (left, 0)), self.weight, self.bias)


def make_convolutions_causal(layers) -> None:
    """Turn the depthwise conv of every ``ParakeetEncoderBlock`` in ``layers`` causal (same weights)."""
    for layer in layers:
        conv = layer.conv.depthwise_conv
        conv.__class__ = CausalDepthwiseConv1d
        conv.padding = (0,)
        layer.conv.padding = 0


def limit_context(mask: torch.Tensor, att_context_size) -> torch.Tensor:
    """``mask [B, 1, T, T]`` (True: may attend) narrowed to the chunked-limited context (no-op for ``None``)."""
    if att_context_size is None:
        return mask
    left, right = att_context_size
    return mask & chunked_limited_mask(mask.shape[-1], left, right, mask.device)


class CausalStridedConv2d(nn.Conv2d):
    """NeMo's ``CausalConv2D``: ``kernel - 1`` frames of padding before and ``stride - 1`` after, on both axes, so
    a subsampled frame reads no feature frame after its own stride (NeMo ``causal_downsampling: true``)."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        before, after = self.kernel_size[0] - 1, self.stride[0] - 1
        return self._conv_forward(nn.functional.pad(hidden, (before, after, before, after)), self.weight, self.bias)


def causal_strided_length(lengths, kernel: int, stride: int):
    """Frames out of one causal strided conv (NeMo ``calc_length`` with ``kernel - 1 + stride - 1`` padding), for
    an int or an integer tensor."""
    return (lengths + (kernel - 1) + (stride - 1) - kernel) // stride + 1


def make_subsampling_causal(encoder) -> None:
    """Turn the strided convs of a ``ParakeetEncoder``'s depthwise-striding subsampling causal, with its length
    arithmetic and its output Linear (the frequency axis is padded too: 80 mel bins -> 11 at 8x, not 10)."""
    subsampling, config = encoder.subsampling, encoder.config
    strided = [m for m in subsampling.layers if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    for conv in strided:
        conv.__class__ = CausalStridedConv2d
        conv.padding = (0, 0)
    kernel, stride = config.subsampling_conv_kernel_size, config.subsampling_conv_stride

    def conv_length(lengths, conv):  # the subsampling's own per-conv mask arithmetic
        return causal_strided_length(lengths, kernel, stride) if conv in strided else lengths

    def subsampled_length(lengths):  # ParakeetEncoder's: used for its attention mask and by the encoder
        for _ in strided:
            lengths = causal_strided_length(lengths, kernel, stride)
        return lengths.to(torch.int)

    subsampling._get_output_length = conv_length  # instance attributes: the class methods assume symmetric padding
    encoder._get_subsampling_output_length = subsampled_length
    bins = config.num_mel_bins  # a plain int: the build may run on the meta device
    for _ in strided:
        bins = causal_strided_length(bins, kernel, stride)
    linear = subsampling.linear
    subsampling.linear = nn.Linear(subsampling.channels * int(bins), linear.out_features, bias=True,
                                   device=linear.weight.device, dtype=linear.weight.dtype)
