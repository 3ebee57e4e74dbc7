"""``conformer_adapter``: NeMo SALM's modality adapter: Conformer layers at the encoder width, then a Linear.

NeMo builds it as a 2-layer ``ConformerEncoder`` (``d_model`` = encoder width, relative positional self-attention,
x-scaling, conv kernel 9, no subsampling, so its ``pre_encode`` is a Linear). The layers here are transformers'
``ParakeetEncoderBlock``, the same NeMo Conformer block (FF/2, rel-pos MHSA, conv module, FF/2, LayerNorm).

Padding: the keys of padded frames are masked in self-attention, and the conv module zeroes padded frames before
its depthwise conv (Parakeet does so for every key that no query may attend to, which is how the mask is built
here). The conv module's BatchNorm1d (NeMo's default ``conv_norm_type``) takes its training statistics over the
whole batch, padding included, so a clip's output would depend on its batch while training; the default
``conv_norm: layernorm`` (NeMo's ``layer_norm``) normalises each frame on its own.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from slmzoo.components import Adapter, AdapterOutput, lengths_to_mask, zero_padding
from slmzoo_plugins.adapters.blocks import check_frames, require_frames
from slmzoo_plugins.encoders.streaming import ChannelLayerNorm, limit_context, make_convolutions_causal


class ConformerAdapter(Adapter):
    """``hidden [B, T, C]`` -> ``embeds [B, T, D]``: Linear to d_model, x-scaling, Conformer layers, Linear."""

    def __init__(self, options, context):
        super().__init__()
        require_frames("conformer_adapter", context)
        from transformers import ParakeetEncoderConfig
        from transformers.models.parakeet.modeling_parakeet import (
            ParakeetEncoderBlock,
            ParakeetEncoderRelPositionalEncoding,
        )

        d_model = options.d_model or context.encoder_dim
        if d_model % options.num_heads:
            raise ValueError(f"adapter conformer_adapter: d_model {d_model} is not divisible by "
                             f"num_heads={options.num_heads}")
        config = ParakeetEncoderConfig(
            hidden_size=d_model, num_hidden_layers=options.num_layers, num_attention_heads=options.num_heads,
            intermediate_size=d_model * options.ff_expansion, conv_kernel_size=options.conv_kernel,
            dropout=options.dropout, attention_dropout=options.dropout, activation_dropout=options.dropout,
            layerdrop=0.0,
        )
        config._attn_implementation = "sdpa"
        self.input_proj = nn.Linear(context.encoder_dim, d_model)  # NeMo's pre_encode when not subsampling
        self.input_scale = math.sqrt(d_model) if options.xscaling else 1.0
        self.dropout = options.dropout
        self.positions = ParakeetEncoderRelPositionalEncoding(config)
        self.layers = nn.ModuleList(ParakeetEncoderBlock(config, i) for i in range(options.num_layers))
        if options.conv_norm == "layernorm":
            for layer in self.layers:
                layer.conv.norm = ChannelLayerNorm(d_model)
        if options.causal_convolutions:
            make_convolutions_causal(self.layers)
        self.att_context_size = options.att_context_size
        self.linear = nn.Linear(d_model, context.llm_dim)
        self.output_dim = context.llm_dim

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> AdapterOutput:
        """``hidden [B, T, C]``, ``lengths [B]`` -> ``embeds [B, T, D]``, same lengths."""
        check_frames("conformer_adapter", hidden)
        hidden = self.input_proj(zero_padding(hidden, lengths)) * self.input_scale
        positions = self.positions(hidden)
        hidden = nn.functional.dropout(hidden, p=self.dropout, training=self.training)
        # [B, 1, T(query), T(key)]: True where the key is a real frame. Padded queries still see the real keys
        # (no all-masked rows, no NaN); the conv module zeroes a frame iff no query may attend to it.
        mask = lengths_to_mask(lengths, hidden.shape[1])[:, None, None, :].expand(-1, 1, hidden.shape[1], -1)
        mask = limit_context(mask, self.att_context_size)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=positions)
        return AdapterOutput(embeds=zero_padding(self.linear(hidden), lengths), lengths=lengths)
