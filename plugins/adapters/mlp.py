"""``mlp``: Linear-act-Linear (LLaVA-style projector) from the encoder width into the LLM width, per frame."""

from __future__ import annotations

import torch
from torch import nn

from slmzoo.components import Adapter, AdapterOutput, zero_padding
from slmzoo_plugins.adapters.blocks import activation, check_frames, require_frames


class MLPAdapter(Adapter):
    """``num_layers`` Linear layers with the activation between them: C -> H -> ... -> H -> D."""

    def __init__(self, options, context):
        super().__init__()
        require_frames("mlp", context)
        self.output_dim = context.llm_dim
        hidden_dim = options.hidden_dim or context.llm_dim
        dims = [context.encoder_dim] + [hidden_dim] * (options.num_layers - 1) + [context.llm_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            if i:
                layers.append(activation(options.activation))
            layers.append(nn.Linear(d_in, d_out))
        self.mlp = nn.Sequential(*layers)

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> AdapterOutput:
        """``hidden [B, T, C]``, ``lengths [B]`` -> ``embeds [B, T, D]``, padded frames zeroed."""
        check_frames("mlp", hidden)
        return AdapterOutput(embeds=zero_padding(self.mlp(hidden), lengths), lengths=lengths)
