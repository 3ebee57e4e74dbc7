"""``ar_decoder``: NeMo DuplexS2SSpeechDecoderModel's speech head, ``TransformerARSpeechDecoder``
(``modules/speech_generation.py``) over NeMo's T5-TTS transformer (``tts/modules/transformer_2501.py``).

A causal transformer over the frames: its input is the LLM's hidden state of each frame (projected to ``d_model``)
plus the mean of the K code embeddings of the previous frame; one Linear predicts all K codebooks of the frame in
parallel (it is a *temporal* decoder, not a depth transformer over codebooks). Each layer is pre-LN (LayerNorm
without bias), fused bias-free QKV self-attention with a causal mask, then a causal convolutional feed-forward
(two Conv1d of ``kernel_size``, GELU-tanh, no bias), the padded frames zeroed before and after; an optional final
LayerNorm. GPT-2 init: N(0, 0.02), the attention output scaled by ``1 / sqrt(2 * n_layers)``.

The LLM input of this variant carries no speech codes (``embeds_into_llm = False``); NeMo still creates the
parallel head's embeddings and Linear there, unused: they are left out here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from slmzoo_plugins.duplex.components import SpeechHead


class CausalConvFeedForward(nn.Module):
    """``[B, T, D]`` -> ``[B, T, D]``: Conv1d(D, D_ffn, k) -> GELU(tanh) -> Conv1d(D_ffn, D, k), left-padded."""

    def __init__(self, d_model: int, d_ffn: int, kernel_size: int, dropout: float):
        super().__init__()
        self.kernel_size = kernel_size
        self.proj = nn.Conv1d(d_model, d_ffn, kernel_size, bias=False)
        self.o_net = nn.Conv1d(d_ffn, d_model, kernel_size, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x.transpose(1, 2), (self.kernel_size - 1, 0))
        x = F.gelu(self.proj(x), approximate="tanh")
        x = self.o_net(F.pad(x, (self.kernel_size - 1, 0)))
        return self.dropout(x.transpose(1, 2))


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.qkv_net = nn.Linear(d_model, 3 * d_model, bias=False)
        self.o_net = nn.Linear(d_model, d_model, bias=False)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x [B, T, D]``, ``mask [B, T]`` (True on real frames) -> ``[B, T, D]``."""
        batch, frames, width = x.shape
        q, k, v = self.qkv_net(x).view(batch, frames, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        causal = torch.ones(frames, frames, dtype=torch.bool, device=x.device).tril()
        allowed = causal[None, None] & mask[:, None, None, :]
        allowed = allowed | torch.eye(frames, dtype=torch.bool, device=x.device)  # a padded query sees itself
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.o_net(out.transpose(1, 2).reshape(batch, frames, width))


class SpeechDecoderLayer(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, n_heads: int, kernel_size: int, dropout: float):
        super().__init__()
        self.norm_self = nn.LayerNorm(d_model, bias=False)
        self.self_attention = CausalSelfAttention(d_model, n_heads, dropout)
        self.norm_ff = nn.LayerNorm(d_model, bias=False)
        self.pos_ff = CausalConvFeedForward(d_model, d_ffn, kernel_size, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask[..., None].to(x.dtype)
        x = x * keep
        x = x + self.dropout(self.self_attention(self.norm_self(x), mask))
        x = x + self.pos_ff(self.norm_ff(x))
        return x * keep


class ARSpeechDecoder(SpeechHead):
    """``hidden [B, T, H]`` + ``previous_codes [B, T, K]`` -> ``logits [B, T, K, V + 3]``."""

    embeds_into_llm = False

    def __init__(self, options, context):
        super().__init__()
        vocabulary = context.extra.get("speech_vocabulary")
        if vocabulary is None or context.llm_dim is None:
            raise ValueError("speech_head ar_decoder: needs a codec (its codebooks) and an llm (its width) built first")
        if options.d_model % options.n_heads:
            raise ValueError(f"speech_head ar_decoder: d_model {options.d_model} is not divisible by "
                             f"n_heads={options.n_heads}")
        self.vocabulary, self.options = vocabulary, options
        d_model = options.d_model
        self.input_proj = nn.Linear(context.llm_dim, d_model) if context.llm_dim != d_model else nn.Identity()
        self.positions = nn.Embedding(options.max_frames, d_model) if options.learnable_positions else None
        self.dropout = nn.Dropout(options.dropout)
        self.layers = nn.ModuleList(SpeechDecoderLayer(d_model, options.d_ffn, options.n_heads, options.kernel_size,
                                                       options.dropout) for _ in range(options.n_layers))
        self.norm_out = nn.LayerNorm(d_model, bias=False) if options.norm_out else nn.Identity()
        self.final_proj = nn.Linear(d_model, vocabulary.num_codebooks * vocabulary.size)
        self.audio_embeddings = nn.ModuleList(nn.Embedding(vocabulary.size, d_model)
                                              for _ in range(vocabulary.num_codebooks))
        self.output_dim = d_model
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv1d)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for layer in self.layers:
            nn.init.normal_(layer.self_attention.o_net.weight, std=0.02 / math.sqrt(2 * len(self.layers)))

    def forward(self, hidden: torch.Tensor, previous_codes: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``hidden [B, T, H]``, ``previous_codes [B, T, K]``, ``mask [B, T]`` -> ``[B, T, K, V + 3]``."""
        frames = hidden.shape[1]
        if frames > self.options.max_frames:
            raise ValueError(f"speech_head ar_decoder: {frames} frames exceed max_frames={self.options.max_frames}")
        if mask is None:
            mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        x = self.input_proj(hidden)
        if self.options.condition_on_previous_codes:
            codes = sum(emb(previous_codes[..., k]) for k, emb in enumerate(self.audio_embeddings))
            x = x + codes / len(self.audio_embeddings)
        if self.positions is not None:
            x = x + self.positions(torch.arange(frames, device=x.device))
        x = self.dropout(x)
        for layer in self.layers:
            x = layer(x, mask.bool())
        logits = self.final_proj(self.norm_out(x))
        return logits.view(*hidden.shape[:-1], self.vocabulary.num_codebooks, self.vocabulary.size)

    def step(self, hidden: torch.Tensor, previous_codes: torch.Tensor, state: dict | None = None):
        """One frame of decoding: the whole history is run again (the causal conv feed-forward needs its left
        context; NeMo caches the inputs and recomputes the feed-forward likewise) and the last frame's logits
        returned, ``[B, 1, K, V + 3]``."""
        state = {"hidden": [], "codes": []} if state is None else state
        state["hidden"].append(hidden)
        state["codes"].append(previous_codes)
        logits = self(torch.cat(state["hidden"], 1), torch.cat(state["codes"], 1))
        return logits[:, -1:], state
