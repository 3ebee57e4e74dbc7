"""``cross_attention``: BESTOW-style fusion. Text token embeddings attend to the speech embeddings in a small
stack of cross-attention blocks *before* the LLM; the result is added back to the token embeddings.

The audio never enters the LLM's sequence: the tags are removed and the audio is kept as memory. The
stack runs inside a forward hook on the LLM's input embedding module, so every embedding lookup (the
prompt, and each token generated with the KV cache) is cross-attended to the memory. For an
encoder-decoder LLM only the encoder input (the prompt) is fused, directly in ``fuse``; the decoder's
embeddings are left alone.

``self_attention: true`` is BESTOW as NeMo builds it (a causal transformer decoder: self-attention among the
text tokens, cross-attention to the audio, feed-forward). Without it a token's query is its embedding alone,
which carries no position: "two" asks the audio the same question wherever it stands in "two five two". (On
the digits corpus a tiny BESTOW stays far above a concatenation model with or without it: 38.4% vs 38.7% test
WER, README benchmark.) With it, the hook keeps each
block's self-attention inputs (:class:`TextContext`) so every generated token attends to the prompt and the
tokens before it, as a full forward would; beam search, which reorders the rows, is not followed.

Every block's residual outputs (the attentions' ``o_proj`` and the feed-forward's last Linear) start at zero, so
the untrained stack is the identity on the token embeddings and the LLM starts from its own inputs. With
PyTorch's default Linear init the residual updates are ~10x the embeddings (std 0.02 in a transformers LLM) and
bury the text: a tiny BESTOW reached 38.4% test WER on the digits in 1600 steps that way, 23.2% in 1400 with the
zero init (README benchmark).
"""

from __future__ import annotations

import torch
from torch import nn

from slmzoo.components import FusedInputs
from slmzoo.decoding import first_used_column, left_pad
from slmzoo.fusion_utils import audio_tag_counts, drop_audio_tags
from slmzoo_plugins.fusion.memory import AudioMemory, FeedForward, MemoryAttention, MemoryFusion, pad_memory


class CrossAttentionBlock(nn.Module):
    """Pre-norm residual block on the text ``x [B, L, D]``: with ``self_attention``, ``x + self_attn(norm(x))``
    causal among the text tokens first; then ``x + attn(norm(x), memory)`` and ``x + ffn(x)``."""

    def __init__(self, dim: int, num_heads: int, ffn_mult: int, self_attention: bool = False):
        super().__init__()
        self.has_self_attention = self_attention
        if self_attention:
            self.self_norm = nn.LayerNorm(dim)
            self.self_attn = MemoryAttention(dim, num_heads)
        self.norm = nn.LayerNorm(dim)
        self.attn = MemoryAttention(dim, num_heads)
        self.ffn = FeedForward(dim, ffn_mult)
        for residual_output in [self.attn.o_proj, self.ffn.net[-1], *([self.self_attn.o_proj] if self_attention else [])]:
            nn.init.zeros_(residual_output.weight)  # the block starts as the identity (module docstring)

    def forward(self, x, memory, memory_mask, past=None, text_mask=None):
        """``past [B, P, D]``: this block's self-attention inputs at the earlier text positions (cached decoding),
        ``text_mask [B, P + L]``: real tokens. Returns ``x`` and the self-attention inputs ``[B, P + L, D]``."""
        states = None
        if self.has_self_attention:
            h = self.self_norm(x)
            states = h if past is None else torch.cat([past, h], 1)
            length, total = x.shape[1], states.shape[1]
            causal = torch.ones(length, total, dtype=torch.bool, device=x.device).tril(total - length)
            x = x + self.self_attn(h, states, causal[None] & text_mask[:, None, :])
        x = x + self.attn(self.norm(x), memory, memory_mask)
        return x + self.ffn(x), states


class TextContext:
    """What the text self-attention of a cached decoding step attends to: ``prompt_mask [B, L]`` set by ``fuse``,
    then each block's inputs ``states`` (``[B, P, D]`` each) at every text position so far and their ``mask
    [B, P]``. Rows are left-padded like the KV cache: ``select`` and ``concat`` pad and cut them the same way."""

    def __init__(self, prompt_mask: torch.Tensor | None = None):
        self.prompt_mask, self.states, self.mask = prompt_mask, None, None

    def before(self, batch: int, length: int, device) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """``text_mask [B, P + L]`` and the blocks' ``past`` for ``length`` new positions: the prompt (first call
        after ``fuse``) attends within itself; each later piece to everything before it."""
        new = torch.ones(batch, length, dtype=torch.bool, device=device)
        if self.states is None:
            prompt = self.prompt_mask
            return (prompt.bool() if prompt is not None and prompt.shape == (batch, length) else new), None
        past, mask = self.states, self.mask
        if batch != mask.shape[0]:  # generate's expansion (num_return_sequences): each row repeated consecutively
            k = batch // mask.shape[0]
            past, mask = [p.repeat_interleave(k, 0) for p in past], mask.repeat_interleave(k, 0)
        return torch.cat([mask, new], 1), past

    def select(self, index: torch.Tensor) -> None:
        """Keep the rows ``index [B']`` (in place); positions no remaining row uses are cut off the left."""
        if self.states is None:
            self.prompt_mask = None if self.prompt_mask is None else self.prompt_mask[index]
            return
        mask = self.mask[index]
        start = first_used_column(mask)
        self.states, self.mask = [s[index, start:] for s in self.states], mask[:, start:]

    @classmethod
    def concat(cls, contexts: list["TextContext"]) -> "TextContext":
        """The rows of every context, in order, left-padded with masked zeros to the longest text."""
        if all(c.states is None for c in contexts):
            return cls()  # no self-attention, or no audio: nothing is kept between steps
        if any(c.states is None for c in contexts):
            raise ValueError("a prompt that has not been through the fusion cannot join a decoding batch")
        joined = cls()
        width = max(c.mask.shape[1] for c in contexts)
        joined.mask = torch.cat([left_pad(c.mask, width, dim=1) for c in contexts])
        joined.states = [torch.cat([left_pad(c.states[i], width, dim=1) for c in contexts])
                         for i in range(len(contexts[0].states))]
        return joined


class CrossAttentionFusion(MemoryFusion):
    STATE = {"audio": AudioMemory, "text": TextContext}

    def __init__(self, options, context):
        super().__init__()
        llm = context.llm
        dim = llm.hidden_size
        self.self_attention = options.self_attention
        self.blocks = nn.ModuleList(CrossAttentionBlock(dim, options.num_heads, options.ffn_mult, options.self_attention)
                                    for _ in range(options.num_layers))
        self.to(llm.dtype)
        self.is_encoder_decoder = llm.is_encoder_decoder
        if not self.is_encoder_decoder:
            # A bound method, not a submodule of the LLM: no shared weights, and deepcopy maps it to the copy.
            llm.input_embeddings().register_forward_hook(self._embedding_hook)

    def cross_attend(self, embeds: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """``embeds [B, L, D]`` -> the same embeddings plus every block's residual update from the audio (and,
        with ``self_attention``, from the text before them: the prompt, then the tokens generated so far)."""
        x = embeds.to(memory.dtype)
        text_mask, past = self.text.before(*x.shape[:2], x.device) if self.self_attention else (None, None)
        states = []
        for i, block in enumerate(self.blocks):
            x, block_states = block(x, memory, memory_mask, None if past is None else past[i], text_mask)
            states.append(block_states)
        if self.self_attention:  # kept for the next cached decoding step (detached: never trained through)
            self.text.states, self.text.mask = [s.detach() for s in states], text_mask
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
        self.audio, self.text = AudioMemory(memory, memory_mask), TextContext(attention_mask)
        embeds = llm.embed(input_ids)  # through the hook: already cross-attended
        if self.is_encoder_decoder and memory is not None:
            embeds = self.cross_attend(embeds, memory, memory_mask)
        return FusedInputs(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)
