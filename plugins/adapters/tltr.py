"""``tltr``: LTU-AS's time and layer-wise transformer (TLTR) over all the layers of the encoder.

LTU-AS feeds all 32 Whisper-large layers of a 10 s clip ``[B, 32, 500, 1280]``: average pooling over time by 20
(500 -> 25 frames), one pre-norm transformer block over time within each layer (1 head), one over the 32 layers
at each time step (8 heads), the mean over the layers, then a LayerNorm without affine and a Linear into the
LLM width: 25 embeddings per 10 s. ``hidden_dim`` adds Whisper-AT's down projection (1280 -> 512) first.

Padding: pooling averages real frames only (a trailing partial window is the mean of its real frames, so
lengths are ``ceil(n / pool)``), the time transformer masks padded steps, and padded steps come out zeroed.
"""

from __future__ import annotations

import torch
from torch import nn

from slmzoo.components import Adapter, AdapterOutput, zero_padding
from slmzoo_plugins.adapters.blocks import MaskedTransformer, masked_avg_pool


class TLTRAdapter(Adapter):
    """``hidden [B, L, T, C]`` -> ``embeds [B, ceil(T / pool), D]``."""

    def __init__(self, options, context):
        super().__init__()
        if not context.encoder_layers_stacked:
            raise ValueError("adapter tltr: needs all encoder layers [B, L, T, C]; set the encoder's layer: all")
        self.pool, self.layer_pooling = options.pool, options.layer_pooling
        width = options.hidden_dim or context.encoder_dim
        self.down = nn.Linear(context.encoder_dim, width) if options.hidden_dim else nn.Identity()
        self.time_transformer = MaskedTransformer(width, options.num_layers, options.time_heads,
                                                  dropout=options.dropout, final_norm=False)
        self.layer_transformer = MaskedTransformer(width, options.num_layers, options.layer_heads,
                                                   dropout=options.dropout, final_norm=False)
        if options.layer_pooling == "attention":
            self.layer_score = nn.Linear(width, 1)  # a learned score per layer and time step, softmax over layers
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.linear = nn.Linear(width, context.llm_dim)
        self.output_dim = context.llm_dim

    def output_frame_rate(self, input_frame_rate: float) -> float:
        return input_frame_rate / self.pool

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> AdapterOutput:
        """``hidden [B, L, T, C]`` (all encoder layers), ``lengths [B]`` -> ``embeds [B, T', D]``."""
        if hidden.dim() != 4:
            raise ValueError(f"adapter tltr: expected all encoder layers [B, L, T, C] (encoder layer: all); got "
                             f"{list(hidden.shape)}")
        batch, num_layers = hidden.shape[:2]
        pooled, lengths = masked_avg_pool(hidden.transpose(1, 2), lengths, self.pool, keep_partial=True)
        steps = pooled.shape[1]
        pooled = self.down(pooled)  # [B, T', L, W]
        # over time, each layer on its own: [B * L, T', W]
        per_layer = pooled.transpose(1, 2).flatten(0, 1)
        per_layer = self.time_transformer(per_layer, lengths.repeat_interleave(num_layers))
        # over layers, each time step on its own: [B * T', L, W] (all L are real)
        per_step = per_layer.view(batch, num_layers, steps, -1).transpose(1, 2).flatten(0, 1)
        per_step = self.layer_transformer(per_step, torch.full_like(lengths, num_layers).repeat_interleave(steps))
        per_step = per_step.view(batch, steps, num_layers, -1)
        if self.layer_pooling == "attention":
            merged = (self.layer_score(per_step).softmax(dim=2) * per_step).sum(2)
        else:
            merged = per_step.mean(2)
        embeds = self.linear(self.norm(merged))
        return AdapterOutput(embeds=zero_padding(embeds, lengths), lengths=lengths)
