"""``avgpool``: average pooling over time, LayerNorm, Linear into the LLM width, after any encoder.

Qwen2-Audio's pooling and LayerNorm sit inside its audio tower, before the projection; the ``whisper``
encoder does that itself (``pool: 2``, see the qwen2-audio card), since its final LayerNorm must follow the
pooling. This adapter brings the same reduction to encoders that end normalised (any other encoder, or
Whisper without ``pool``): pool, LayerNorm, Linear. ``AvgPool1d`` floors: an odd trailing frame is dropped
(``(n - 2) // 2 + 1 = n // 2`` output frames, as Qwen2-Audio);
``keep_partial`` keeps it as the mean of the real frames of the last window instead. Pooling never averages a
padded frame into a real one.
"""

from __future__ import annotations

import torch
from torch import nn

from slmzoo.components import Adapter, AdapterOutput, zero_padding
from slmzoo_plugins.adapters.blocks import check_frames, masked_avg_pool, require_frames


class AvgPoolAdapter(Adapter):
    """``hidden [B, T, C]`` -> ``embeds [B, T // pool, D]``."""

    def __init__(self, options, context):
        super().__init__()
        require_frames("avgpool", context)
        self.pool, self.keep_partial = options.pool, options.keep_partial
        self.layer_norm = nn.LayerNorm(context.encoder_dim) if options.norm else nn.Identity()
        self.linear = nn.Linear(context.encoder_dim, context.llm_dim)
        self.output_dim = context.llm_dim

    def output_frame_rate(self, input_frame_rate: float) -> float:
        return input_frame_rate / self.pool

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> AdapterOutput:
        """``hidden [B, T, C]``, ``lengths [B]`` -> ``embeds [B, T', D]``, lengths ``n // pool`` (or ceil)."""
        check_frames("avgpool", hidden)
        pooled, lengths = masked_avg_pool(hidden, lengths, self.pool, self.keep_partial)
        embeds = self.linear(self.layer_norm(pooled))
        return AdapterOutput(embeds=zero_padding(embeds, lengths), lengths=lengths)
