"""``linear``: one Linear layer from the encoder width into the LLM width, frame rate unchanged."""

from __future__ import annotations

import torch
from torch import nn

from slmzoo.components import Adapter, AdapterOutput, zero_padding
from slmzoo_plugins.adapters.blocks import check_frames, require_frames


class LinearAdapter(Adapter):
    def __init__(self, options, context):
        super().__init__()
        require_frames("linear", context)
        self.output_dim = context.llm_dim
        self.proj = nn.Linear(context.encoder_dim, context.llm_dim, bias=options.bias)

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> AdapterOutput:
        """``hidden [B, T, C]``, ``lengths [B]`` -> ``embeds [B, T, D]``, padded frames zeroed."""
        check_frames("linear", hidden)
        return AdapterOutput(embeds=zero_padding(self.proj(hidden), lengths), lengths=lengths)
