"""``adapter_prompt``: MU-LLaMA / LLaMA-Adapter. ``prompt_length`` learned prompt vectors per layer for the
last ``num_layers`` layers of the LLM, conditioned on the audio (MU-LLaMA: the projected, mean-pooled
audio feature is added to every prompt), are attended to by the text tokens in those layers' self-attention.

The prompts' keys and values come from the layer's own ``k_proj`` / ``v_proj``; the tokens' queries are the
layer's queries (normed and rotated like the layer does). The attention over the prompts is a softmax of
its own, scaled by a per-head gate initialised to 0 (LLaMA-Adapter's zero-init attention), so the
untrained model equals the LLM exactly. It is added to the attention output through a forward hook on the
attention modules; the audio tags are removed from the sequence and the audio kept as memory, so cached
decoding sees it at every step. Supports attention modules with ``q_proj``/``k_proj``/``v_proj``/``o_proj``
(Llama, Mistral, Qwen2/3, Gemma).
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from slmzoo.components import FusedInputs
from slmzoo.fusion_utils import audio_tag_counts, drop_audio_tags
from slmzoo_plugins.fusion.memory import AudioMemory, MemoryFusion, pad_memory


class AdapterPromptFusion(MemoryFusion):
    def __init__(self, options, context):
        super().__init__()
        llm = context.llm
        layers = llm.decoder_layers()
        num_layers = len(layers) if options.num_layers is None else options.num_layers
        if num_layers > len(layers):
            raise ValueError(f"fusion.num_layers: {num_layers} but the LLM has {len(layers)} layers")
        self.attns = [self._attention(layer) for layer in layers[len(layers) - num_layers:]]  # not submodules
        dim, head_dim = llm.hidden_size, self.attns[0].head_dim
        # Head counts from the projections themselves: q_proj maps to H heads, k_proj to the (grouped) KV heads.
        heads = self.attns[0].q_proj.out_features // head_dim
        self.num_heads, self.num_kv_heads = heads, self.attns[0].k_proj.out_features // head_dim
        self.prompts = nn.Parameter(torch.randn(num_layers, options.prompt_length, dim))  # [N, K, D]
        self.audio_proj = nn.Linear(dim, dim)
        self.gates = nn.Parameter(torch.zeros(num_layers, heads))  # zero-init attention: starts as the LLM
        self.to(llm.dtype)
        self.rotate_queries = llm.rotate_queries  # a bound method, not a submodule: deepcopy maps it to the copy
        for j, attn in enumerate(self.attns):
            attn.register_forward_hook(partial(self._attention_hook, j), with_kwargs=True)

    @staticmethod
    def _attention(layer) -> nn.Module:
        attn = getattr(layer, "self_attn", None)
        if attn is None or not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            raise ValueError(f"adapter_prompt needs q_proj/k_proj/v_proj/o_proj attention; {type(layer).__name__} "
                             "has none (supported: Llama, Mistral, Qwen2/3, Gemma)")
        return attn

    def _attention_hook(self, j: int, attn, args, kwargs, output):
        """Adds the attention over layer ``j``'s prompts to ``attn``'s output."""
        if self.audio.memory is None:
            return None
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        extra = self._prompt_attention(j, attn, hidden, kwargs.get("position_embeddings"))
        return (output[0] + extra.to(output[0].dtype), *output[1:])

    def _prompt_attention(self, j, attn, hidden, position_embeddings) -> torch.Tensor:
        """``hidden [B, L, D]`` (the attention's input) -> the gated attention output over layer ``j``'s prompts."""
        (b, length, _), k_len, head_dim = hidden.shape, self.prompts.shape[1], attn.head_dim
        memory, mask = self.audio.for_batch(b)
        weights = mask.to(memory.dtype)[..., None]
        pooled = (memory * weights).sum(1) / weights.sum(1).clamp(min=1)  # [B, D] mean over real frames
        prompts = (self.prompts[j][None] + self.audio_proj(pooled)[:, None]).to(hidden.dtype)  # [B, K, D]
        q = attn.q_proj(hidden).view(b, length, -1, head_dim)
        k = attn.k_proj(prompts).view(b, k_len, -1, head_dim)
        if hasattr(attn, "q_norm"):  # Qwen3 normalises queries and keys per head
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = attn.v_proj(prompts).view(b, k_len, -1, head_dim).transpose(1, 2)
        q = self.rotate_queries(attn, q, position_embeddings)  # queries rotated as the layer's; prompts not
        k = k.repeat_interleave(self.num_heads // self.num_kv_heads, 1)  # grouped-query heads
        v = v.repeat_interleave(self.num_heads // self.num_kv_heads, 1)
        scores = q @ k.transpose(-1, -2) * getattr(attn, "scaling", 1 / math.sqrt(head_dim))  # [B, H, L, K]
        probs = F.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(q.dtype)
        probs = probs * self.gates[j].to(q.dtype)[None, :, None, None]  # zero-init gate per head
        out = (probs @ v).transpose(1, 2).reshape(b, length, -1)
        # o_proj without its bias: a zero gate must add exactly nothing (LoRA on o_proj maps 0 to 0 too).
        o_proj = attn.o_proj
        bias = getattr(o_proj.get_base_layer() if hasattr(o_proj, "get_base_layer") else o_proj, "bias", None)
        return o_proj(out) - bias if bias is not None else o_proj(out)

    def fuse(self, llm, input_ids, attention_mask, audio_embeds, labels=None, padding_side="right") -> FusedInputs:
        """Tags removed from ``input_ids [B, L]``; ``audio_embeds`` (``[T_i, D]`` each) condition the prompts."""
        counts = audio_tag_counts(llm, input_ids, attention_mask, len(audio_embeds))
        memory, memory_mask = pad_memory(audio_embeds, counts, self.prompts.dtype)
        input_ids, attention_mask, labels = drop_audio_tags(llm, input_ids, attention_mask, labels, padding_side)
        self.audio = AudioMemory(memory, memory_mask)
        return FusedInputs(inputs_embeds=llm.embed(input_ids), attention_mask=attention_mask, labels=labels)
