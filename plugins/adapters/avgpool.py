"""``avgpool``: Qwen2-Audio's adapter: average pooling over time, LayerNorm, Linear into the LLM width.

In Qwen2-Audio the ``AvgPool1d(2, stride=2)`` and the final ``layer_norm`` sit at the end of
``Qwen2AudioEncoder`` (after its last transformer layer) and ``Qwen2AudioMultiModalProjector`` is one Linear;
here the three form the adapter, so an encoder without them (``whisper``) feeds it directly. ``AvgPool1d``
floors: an odd trailing frame is dropped (Qwen2-Audio's ``(n - 2) // 2 + 1 = n // 2`` output length);
``keep_partial`` keeps it as the mean of the real frames of the last window instead. Pooling never averages a
padded frame into a real one.
"""

from __future__ import annotations

import torch
from torch import nn

from slmzoo.components import Adapter, AdapterOutput, zero_padding
from slmzoo_plugins.adapters.layers import check_frames, masked_avg_pool, require_frames


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
