"""``conv``: a stack of strided Conv1d layers with GELU, then a Linear into the LLM width.

The total ``stride`` is split over the ``layers`` (``stride=8, layers=2`` -> 4, 2). Every conv pads
``(kernel - 1) // 2`` zeros on both sides and the padded frames are zeroed before each conv, so the last real
output frame of a clip sees exact zeros past the clip end, as it does when the clip is alone.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from slmzoo.components import Adapter, AdapterOutput, zero_padding
from slmzoo_plugins.adapters.blocks import check_frames, require_frames


def split_stride(stride: int, layers: int) -> list[int]:
    """Per-layer strides whose product is ``stride``: prime factors dealt largest-first onto the smallest
    running product (``12, 2 -> [4, 3]``; ``5, 2 -> [5, 1]``)."""
    factors, n, p = [], stride, 2
    while n > 1:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    strides = [1] * layers
    for f in sorted(factors, reverse=True):
        strides[strides.index(min(strides))] *= f
    return sorted(strides, reverse=True)


class ConvAdapter(Adapter):
    """``hidden [B, T, C]`` -> ``embeds [B, T', D]`` with ``T'`` from the conv length formula per layer."""

    def __init__(self, options, context):
        super().__init__()
        require_frames("conv", context)
        self.strides = split_stride(options.stride, options.layers)
        self.kernel, self.padding = options.kernel, (options.kernel - 1) // 2
        hidden_dim = options.hidden_dim or context.llm_dim
        dims = [context.encoder_dim] + [hidden_dim] * options.layers
        self.convs = nn.ModuleList(
            nn.Conv1d(d_in, d_out, options.kernel, stride=s, padding=self.padding)
            for d_in, d_out, s in zip(dims[:-1], dims[1:], self.strides)
        )
        self.act = nn.GELU()
        self.proj = nn.Linear(hidden_dim, context.llm_dim)
        self.output_dim = context.llm_dim

    def output_frame_rate(self, input_frame_rate: float) -> float:
        return input_frame_rate / math.prod(self.strides)

    def conv_lengths(self, lengths: torch.Tensor, stride: int) -> torch.Tensor:
        return (lengths + 2 * self.padding - self.kernel) // stride + 1

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> AdapterOutput:
        """``hidden [B, T, C]``, ``lengths [B]`` -> ``embeds [B, T', D]``, lengths by the conv formula."""
        check_frames("conv", hidden)
        for conv, stride in zip(self.convs, self.strides):
            hidden = conv(zero_padding(hidden, lengths).transpose(1, 2)).transpose(1, 2)
            hidden, lengths = self.act(hidden), self.conv_lengths(lengths, stride).clamp(min=0)
        return AdapterOutput(embeds=zero_padding(self.proj(hidden), lengths), lengths=lengths)
