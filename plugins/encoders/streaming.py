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
