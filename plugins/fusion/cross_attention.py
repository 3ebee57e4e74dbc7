"""``cross_attention``: BESTOW-style fusion. Text token embeddings attend to the speech embeddings in a small
stack of cross-attention blocks *before* the LLM; the result is added back to the token embeddings.

The audio never enters the LLM's sequence: the tags are removed and the audio is kept as memory. The
stack runs inside a forward hook on the LLM's input embedding module, so every embedding lookup (the
prompt, and each token generated with the KV cache) is cross-attended to the memory. The blocks have
no self-attention among text tokens, so a token's output depends only on itself and the audio: this is
what makes cached decoding exact. For an encoder-decoder LLM only the encoder input (the prompt) is
fused, directly in ``fuse``; the decoder's embeddings are left alone.
"""

from __future__ import annotations

import torch
from torch import nn

from slmzoo.components import FusedInputs, Fusion
from slmzoo.fusion_utils import audio_tag_counts, drop_audio_tags
from slmzoo_plugins.fusion.memory import AudioMemory, FeedForward, MemoryAttention, pad_memory


class CrossAttentionBlock(nn.Module):
    """Pre-norm residual block: ``x + attn(norm(x), memory)``, then ``x + ffn(x)``. ``x [B, L, D]``."""

    def __init__(self, dim: int, num_heads: int, ffn_mult: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = MemoryAttention(dim, num_heads)
        self.ffn = FeedForward(dim, ffn_mult)

    def forward(self, x, memory, memory_mask):
        x = x + self.attn(self.norm(x), memory, memory_mask)
        return x + self.ffn(x)


class CrossAttentionFusion(Fusion):
    def __init__(self, options, context):
        super().__init__()
        llm = context.llm
        dim = llm.hidden_size
        self.blocks = nn.ModuleList(CrossAttentionBlock(dim, options.num_heads, options.ffn_mult)
                                    for _ in range(options.num_layers))
        self.to(llm.dtype)
        self.audio = AudioMemory()
        self.is_encoder_decoder = llm.is_encoder_decoder
        if not self.is_encoder_decoder:
            # A bound method, not a submodule of the LLM: no shared weights, and deepcopy maps it to the copy.
            llm.input_embeddings().register_forward_hook(self._embedding_hook)

    def release(self) -> None:
        self.audio.clear()

    def cross_attend(self, embeds: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """``embeds [B, L, D]`` -> the same embeddings plus every block's residual update from the audio."""
        x = embeds.to(memory.dtype)
        for block in self.blocks:
            x = block(x, memory, memory_mask)
        return x.to(embeds.dtype)

    def _embedding_hook(self, module, args, embeds: torch.Tensor):
        if self.audio.memory is None or embeds.dim() != 3:
            return None  # no audio set: the plain token embeddings
        memory, mask = self.audio.for_batch(embeds.shape[0])
        return self.cross_attend(embeds, memory, mask)

    def fuse(self, llm, input_ids, attention_mask, audio_embeds, labels=None, padding_side="right") -> FusedInputs:
        """Tags removed from ``input_ids [B, L]``; ``audio_embeds`` (``[T_i, D]`` each) become the memory."""
        counts = audio_tag_counts(llm, input_ids, attention_mask, len(audio_embeds))
        memory, memory_mask = pad_memory(audio_embeds, counts, self.blocks[0].norm.weight.dtype)
        input_ids, attention_mask, labels = drop_audio_tags(llm, input_ids, attention_mask, labels, padding_side)
        self.audio.set(memory, memory_mask)
        embeds = llm.embed(input_ids)  # through the hook: already cross-attended
        if self.is_encoder_decoder and memory is not None:
            embeds = self.cross_attend(embeds, memory, memory_mask)
        return FusedInputs(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)
