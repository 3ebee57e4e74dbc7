"""``gated_xattn``: Flamingo / Audio Flamingo. Gated cross-attention blocks are interleaved with the LLM's
layers: before every ``every``-th decoder layer, the hidden states attend to the audio memory.

Each block adds ``tanh(gate) * update`` with the gates initialised to 0, so the untrained model *is* the
text LLM (exactly: the updates are multiplied by zero). The blocks run in forward pre-hooks on the
LLM's layers and read the memory ``fuse`` set, so cached decoding attends to the audio at every step.
The blocks are the fusion's parameters, never the LLM's: freezing the LLM leaves them trainable.

``zero_init: outputs`` starts the gates at 1 (tanh 0.76) and the blocks' output projections (``attn.o_proj``, the
feed-forward's last Linear) at zero instead: the untrained model is the text LLM just as exactly, but the first
gradients reach whole matrices rather than one scalar per block. From scratch the scalar gates hardly move: a tiny
Audio Flamingo's attention gates were at 0.01 and 0.03 after 1200 steps on the digits corpus (README benchmark).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from slmzoo.components import FusedInputs
from slmzoo.fusion_utils import audio_tag_counts, drop_audio_tags
from slmzoo_plugins.fusion.memory import AudioMemory, FeedForward, MemoryAttention, MemoryFusion, pad_memory


class GatedCrossAttentionBlock(nn.Module):
    """``x + tanh(a) * attn(norm(x), memory)``, then ``x + tanh(f) * ffn(x)``; ``a = f = 0`` at init.

    ``x [B, L, D]``, ``memory [B, M, D]``, ``memory_mask [B, M]``.
    """

    def __init__(self, dim: int, num_heads: int, ffn_mult: int, zero_init: str = "gates"):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = MemoryAttention(dim, num_heads)
        self.ffn = FeedForward(dim, ffn_mult)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ffn_gate = nn.Parameter(torch.zeros(1))
        if zero_init == "outputs":  # the module docstring: the gates open, the outputs start at zero
            nn.init.ones_(self.attn_gate), nn.init.ones_(self.ffn_gate)
            nn.init.zeros_(self.attn.o_proj.weight), nn.init.zeros_(self.ffn.net[-1].weight)

    def forward(self, x, memory, memory_mask):
        x = x + self.attn_gate.tanh() * self.attn(self.norm(x), memory, memory_mask)
        return x + self.ffn_gate.tanh() * self.ffn(x)


class GatedCrossAttentionFusion(MemoryFusion):
    def __init__(self, options, context):
        super().__init__()
        llm = context.llm
        layers = llm.decoder_layers()
        self.layer_ids = list(range(0, len(layers), options.every))
        self.blocks = nn.ModuleList(GatedCrossAttentionBlock(llm.hidden_size, options.num_heads, options.ffn_mult,
                                                             options.zero_init) for _ in self.layer_ids)
        self.to(llm.dtype)
        for block, i in zip(self.blocks, self.layer_ids):
            # partial of a bound method (not a closure), so deepcopy of the model maps it to the copies.
            layers[i].register_forward_pre_hook(partial(self._layer_hook, block), with_kwargs=True)

    def _layer_hook(self, block: GatedCrossAttentionBlock, layer, args, kwargs):
        """Runs ``block`` on the hidden states entering ``layer``."""
        if self.audio.memory is None:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        memory, mask = self.audio.for_batch(hidden.shape[0])
        hidden = block(hidden.to(memory.dtype), memory, mask).to(hidden.dtype)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def fuse(self, llm, input_ids, attention_mask, audio_embeds, labels=None, padding_side="right") -> FusedInputs:
        """Tags removed from ``input_ids [B, L]``; ``audio_embeds`` (``[T_i, D]`` each) become the memory
        every gated block attends to during the next forward or generate."""
        counts = audio_tag_counts(llm, input_ids, attention_mask, len(audio_embeds))
        memory, memory_mask = pad_memory(audio_embeds, counts, self.blocks[0].attn_gate.dtype)
        input_ids, attention_mask, labels = drop_audio_tags(llm, input_ids, attention_mask, labels, padding_side)
        self.audio = AudioMemory(memory, memory_mask)
        return FusedInputs(inputs_embeds=llm.embed(input_ids), attention_mask=attention_mask, labels=labels)
