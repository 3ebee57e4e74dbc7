"""``audio_transformer``: Audio Flamingo's audio representation transformation, a small transformer encoder over
the encoder's frames, then a Linear into the LLM width.

The layout of Audio Flamingo's ``TransformerEncoder`` (NVIDIA/audio-flamingo, ``foundation/src``; 3 layers, 8
heads, inner width 2048 over ClapCap's 1024-wide window embeddings): the frames are scaled by ``sqrt(width)``, get the
sinusoidal positional encoding, a LayerNorm, then post-norm layers with ReLU feed-forwards (LayerNorm eps 1e-6).

The positions matter: a cross-attention fusion (``gated_xattn``) sees the audio as an unordered set of frames, so
only what the adapter writes into them tells it which word came first.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from slmzoo.components import Adapter, AdapterOutput, zero_padding
from slmzoo_plugins.adapters.blocks import MaskedTransformer, check_frames, require_frames, sinusoidal_positions


class AudioTransformerAdapter(Adapter):
    """``[B, T, C]`` -> ``num_layers`` post-norm transformer layers at width ``C`` (with positions) -> ``[B, T, D]``."""

    def __init__(self, options, context):
        super().__init__()
        require_frames("audio_transformer", context)
        width = context.encoder_dim
        self.output_dim = context.llm_dim
        self.position, self.scale = options.position, math.sqrt(width) if options.scale_input else 1.0
        self.input_norm = nn.LayerNorm(width, eps=1e-6)
        self.transformer = MaskedTransformer(width, options.num_layers, options.num_heads, options.ff_dim,
                                             options.dropout, final_norm=False, norm_first=False,
                                             activation="relu", eps=1e-6)
        self.proj = nn.Linear(width, context.llm_dim)

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> AdapterOutput:
        """``hidden [B, T, C]``, ``lengths [B]`` -> ``embeds [B, T, D]``, padded frames zeroed."""
        check_frames("audio_transformer", hidden)
        hidden = hidden * self.scale
        if self.position == "sinusoidal":
            hidden = hidden + sinusoidal_positions(hidden.shape[1], hidden.shape[2], hidden.device, hidden.dtype)
        hidden = self.transformer(self.input_norm(hidden), lengths)
        return AdapterOutput(embeds=zero_padding(self.proj(hidden), lengths), lengths=lengths)
