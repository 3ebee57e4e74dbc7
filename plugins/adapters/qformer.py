"""``qformer``: a fixed number of learned queries attend over the whole clip (BLIP-2's Q-Former; COSMIC, GAMA).

The Q-Former is transformers' ``Blip2QFormerModel``: query self-attention, cross-attention to the encoder frames
(every ``cross_attention_every`` layers), feed-forward. Padded frames are masked out of the cross-attention, so
every clip yields ``num_queries`` embeddings that do not depend on the batch.
"""

from __future__ import annotations

import torch
from torch import nn

from slmzoo.components import Adapter, AdapterOutput, lengths_to_mask, zero_padding
from slmzoo_plugins.adapters.blocks import check_frames, require_frames


def qformer_init_std(options) -> float:
    """BERT's (and BLIP-2's) fixed 0.02 suits its width, 768; a narrower Q-Former at 0.02 shrinks every projection
    by ``0.02 * sqrt(width)``, so the constant queries drown the audio (at width 96 the windows' outputs differ by
    under 2% of their size, against 19% at 768). Scaled by ``sqrt(768 / width)`` a narrow one starts as BLIP-2's."""
    return options.init_std or 0.02 * (768 / options.hidden_size) ** 0.5


def build_qformer(options, encoder_dim: int):
    """A randomly initialised ``Blip2QFormerModel`` (no text input) cross-attending to ``encoder_dim`` frames."""
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    config = Blip2QFormerConfig(
        hidden_size=options.hidden_size, num_hidden_layers=options.num_layers, num_attention_heads=options.num_heads,
        intermediate_size=options.intermediate_size or 4 * options.hidden_size, encoder_hidden_size=encoder_dim,
        hidden_dropout_prob=options.dropout, attention_probs_dropout_prob=options.dropout,
        cross_attention_frequency=options.cross_attention_every, initializer_range=qformer_init_std(options),
    )
    return Blip2QFormerModel(config)


class QFormerAdapter(Adapter):
    """``hidden [B, T, C]`` -> ``embeds [B, num_queries, D]``: learned queries, Q-Former, Linear."""

    name = "qformer"

    def __init__(self, options, context):
        super().__init__()
        require_frames(self.name, context)
        self.num_queries = options.num_queries
        self.input_norm = nn.LayerNorm(context.encoder_dim) if options.input_norm else nn.Identity()
        self.query = nn.Parameter(torch.empty(1, options.num_queries, options.hidden_size)
                                  .normal_(std=options.query_init_std))
        self.qformer = build_qformer(options, context.encoder_dim)
        self.linear = nn.Linear(options.hidden_size, context.llm_dim)
        self.output_dim = context.llm_dim

    def output_frame_rate(self, input_frame_rate: float) -> None:
        return None  # num_queries per clip, whatever its duration

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> AdapterOutput:
        """``hidden [B, T, C]``, ``lengths [B]`` -> ``embeds [B, num_queries, D]``, lengths ``num_queries``."""
        check_frames("qformer", hidden)
        hidden = self.input_norm(zero_padding(hidden, lengths))
        queries = self.query.expand(hidden.shape[0], -1, -1).to(hidden.dtype)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=hidden,
                           encoder_attention_mask=lengths_to_mask(lengths, hidden.shape[1]).long())
        embeds = self.linear(out.last_hidden_state.to(self.linear.weight.dtype))
        return AdapterOutput(embeds=embeds, lengths=torch.full_like(lengths, self.num_queries))
