"""``stack``: stack k consecutive encoder frames into one, then an MLP into the LLM width.

Ultravox's projector (stack, RMSNorm, Linear, SwiGLU, Linear), SLAM-ASR's (stack, Linear, ReLU, Linear) and
Voxtral's (k=4, Linear, GELU, Linear, no biases: ``bias: false``). Frames are stacked in time order, each frame's
channels together (``[f0 | f1 | ... | f(k-1)]``): the ``reshape(-1, k * C)`` Voxtral applies to its tower output.
Padded frames are zeroed before stacking, so the last real group of a clip holds exact zeros past the clip end,
as it does when the clip is alone: a clip's embeddings never depend on its batch. A Whisper encoder with
``window_multiple: k`` hands over each 30 s window of a long clip rounded up to whole groups, so the groups never
straddle two windows (Ultravox's projector stacks each chunk on its own).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from slmzoo.components import Adapter, AdapterOutput, zero_padding
from slmzoo_plugins.adapters.blocks import activation, check_frames, require_frames


class StackAdapter(Adapter):
    """``hidden [B, T, C]`` -> ``embeds [B, ceil(T / k), D]``: stack, optional norm, MLP (optional norm after
    its activation)."""

    def __init__(self, options, context):
        super().__init__()
        require_frames("stack", context)
        self.k = options.k
        multiple = getattr(context.components.get("encoder"), "window_multiple", 1)
        if multiple not in (1, self.k):
            raise ValueError(f"adapter stack: k {self.k} but encoder.window_multiple {multiple}: set them equal, so "
                             "each 30 s window of a long clip is stacked on its own")
        stacked_dim = options.k * context.encoder_dim
        hidden_dim = options.hidden_dim or context.llm_dim
        if options.activation == "swiglu" and hidden_dim % 2:
            raise ValueError(f"adapter stack: swiglu halves the hidden width, so hidden_dim must be even (got "
                             f"{hidden_dim})")
        # RMSNorm at eps 1e-6 (Ultravox's; torch's default is the dtype's eps, 7.8e-3 in bf16)
        norms = {"layernorm": nn.LayerNorm, "rmsnorm": partial(nn.RMSNorm, eps=1e-6)}
        mid_dim = hidden_dim // 2 if options.activation == "swiglu" else hidden_dim
        self.norm = norms[options.norm](stacked_dim) if options.norm in norms else nn.Identity()
        self.linear_1 = nn.Linear(stacked_dim, hidden_dim, bias=options.bias)
        self.act = activation(options.activation)
        self.mid_norm = norms[options.mid_norm](mid_dim) if options.mid_norm in norms else nn.Identity()
        self.linear_2 = nn.Linear(mid_dim, context.llm_dim, bias=options.bias)
        self.output_dim = context.llm_dim
        # Ultravox's RMSNorm(init=config.norm_init) starts its weights at 0.4, not 1
        for norm in (self.norm, self.mid_norm):
            if getattr(norm, "weight", None) is not None:
                nn.init.constant_(norm.weight, options.norm_init)

    def output_frame_rate(self, input_frame_rate: float) -> float:
        return input_frame_rate / self.k

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> AdapterOutput:
        """``hidden [B, T, C]``, ``lengths [B]`` in frames -> ``embeds [B, ceil(T / k), D]``, ``ceil(len / k)``."""
        check_frames("stack", hidden)
        B, T, C = hidden.shape
        hidden = zero_padding(hidden, lengths)
        pad = -T % self.k
        hidden = nn.functional.pad(hidden, (0, 0, 0, pad)).reshape(B, (T + pad) // self.k, self.k * C)
        embeds = self.linear_2(self.mid_norm(self.act(self.linear_1(self.norm(hidden)))))
        out_lengths = (lengths + self.k - 1) // self.k
        return AdapterOutput(embeds=zero_padding(embeds, out_lengths), lengths=out_lengths)
