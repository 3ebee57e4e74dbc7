"""The torch implementation of the ``mean_pool`` adapter, imported only when a model is built."""

from __future__ import annotations

import torch
from torch import nn

from slmzoo.components import Adapter, AdapterOutput, lengths_to_mask


class MeanPoolAdapter(Adapter):
    """``hidden [B, T, C]``, ``lengths [B]`` -> ``embeds [B, ceil(T / window), D]``, ``ceil(lengths / window)``.

    Padding invariant: a window averages only real frames (the last window of a clip may be partial), so a
    clip's embeddings are the same alone or in a batch with longer clips.
    """

    def __init__(self, options, context):
        super().__init__()
        if context.encoder_layers_stacked:
            raise ValueError("adapter mean_pool takes one encoder layer: set encoder.layer to 'last', "
                             "'weighted' or an int, not 'all'")
        self.window = options.window
        self.output_dim = context.llm_dim
        in_dim = context.encoder_dim
        self.norm = nn.LayerNorm(in_dim) if options.layernorm else nn.Identity()
        if options.hidden_dim is None:
            self.proj = nn.Linear(in_dim, self.output_dim)
        else:
            self.proj = nn.Sequential(nn.Linear(in_dim, options.hidden_dim), nn.GELU(),
                                      nn.Linear(options.hidden_dim, self.output_dim))

    def output_frame_rate(self, input_frame_rate: float) -> float:
        return input_frame_rate / self.window

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> AdapterOutput:
        if hidden.dim() != 3:  # slmzoo.testing checks that bad input is refused, naming it
            raise ValueError(f"adapter mean_pool: expected encoder frames [B, T, C]; got {list(hidden.shape)}")
        batch, frames, channels = hidden.shape
        k = self.window
        pad = (-frames) % k
        mask = lengths_to_mask(lengths, frames).to(hidden.dtype)  # [B, T], 1 on real frames
        hidden = hidden * mask[..., None]
        if pad:
            hidden = nn.functional.pad(hidden, (0, 0, 0, pad))
            mask = nn.functional.pad(mask, (0, pad))
        sums = hidden.view(batch, -1, k, channels).sum(dim=2)
        counts = mask.view(batch, -1, k).sum(dim=2, keepdim=True)
        pooled = sums / counts.clamp(min=1)
        out_lengths = torch.div(lengths + k - 1, k, rounding_mode="floor")
        embeds = self.proj(self.norm(pooled))
        out_mask = lengths_to_mask(out_lengths, embeds.shape[1]).to(embeds.dtype)
        return AdapterOutput(embeds=embeds * out_mask[..., None], lengths=out_lengths)
