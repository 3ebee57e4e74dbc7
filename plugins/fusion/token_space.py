"""``token_space``: discrete audio units as tokens of an extended vocabulary (SpeechGPT, AudioPaLM style).

The adapter (e.g. ``discrete_units``) returns unit ids ``[T_i]`` per clip instead of embeddings; the
vocabulary is extended by ``num_units`` tokens, and each audio tag of the prompt is replaced by the
embeddings of its unit tokens (placement exactly as ``concat``).

The new embedding rows live here, in the fusion, as their own table rather than as rows appended to the
LLM's embedding matrix: ``train.freeze: [llm]`` then freezes every original row and only the new rows
learn, with no gradient mask to keep in sync. They are initialised at the mean of the LLM's rows plus
noise of the rows' spread (what ``resize_token_embeddings`` does), so unit tokens start in-distribution.

Unit ``k`` is token id ``unit_offset + k``, ``unit_offset`` the LLM's own vocabulary size: ids past the LLM's
rows in ``input_ids`` (a response that speaks, teacher-forced) are embedded from the unit table. With
``output_units`` the LM head grows the same rows (:meth:`TokenSpaceFusion.head`: ``[B, L, V + num_units]``),
tied to the unit embeddings when the LLM ties its own, so generation can emit units.
"""

from __future__ import annotations

import torch
from torch import nn

from slmzoo.components import FusedInputs
from slmzoo_plugins.fusion.concat import ConcatFusion


class TokenSpaceFusion(ConcatFusion):
    def __init__(self, options, context):
        super().__init__()
        num_units = options.num_units
        if num_units is None and context.card is not None:  # default: the adapter's codebook size
            adapter = context.card.data.get("adapter", {})
            num_units = adapter.get("num_units") or adapter.get("codebook_size")
        if not num_units:
            raise ValueError("fusion.num_units: give the number of discrete units (the adapter's codebook size)")
        llm = context.llm
        self.num_units = int(num_units)
        self.unit_embeddings = nn.Embedding(self.num_units, llm.hidden_size, dtype=llm.dtype)
        table = llm.input_embeddings().weight
        self.unit_offset = int(table.shape[0])
        if table.device.type != "meta":
            with torch.no_grad():
                mean, std = table.mean(0), table.float().std(0).to(table.dtype)
                self.unit_embeddings.weight.copy_(mean + torch.randn_like(self.unit_embeddings.weight) * std)
        self.output_units = options.output_units
        self.unit_head = None
        if self.output_units and not ties_embeddings(llm):
            self.unit_head = nn.Linear(llm.hidden_size, self.num_units, bias=False, dtype=llm.dtype)
            with torch.no_grad():
                self.unit_head.weight.copy_(self.unit_embeddings.weight)

    def fuse(self, llm, input_ids, attention_mask, audio_embeds, labels=None, padding_side="right") -> FusedInputs:
        """``audio_embeds``: one ``[T_i]`` long tensor of unit ids per clip (valid units only)."""
        if any(u.is_floating_point() for u in audio_embeds):
            raise TypeError("token_space fuses discrete unit ids [T_i] (an adapter that sets AdapterOutput.units, "
                            "e.g. discrete_units), not embeddings")
        if any(u.numel() and (int(u.min()) < 0 or int(u.max()) >= self.num_units) for u in audio_embeds):
            raise ValueError(f"unit id out of range [0, {self.num_units})")
        embeds = [self.unit_embeddings(u.long()) for u in audio_embeds]
        return super().fuse(llm, input_ids, attention_mask, embeds, labels=labels, padding_side=padding_side)

    def embed_tokens(self, llm, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids [B, L]`` (text ids and unit tokens ``unit_offset + k``) -> ``[B, L, D]``."""
        is_unit = input_ids >= self.unit_offset
        if not bool(is_unit.any()):
            return llm.embed(input_ids)
        if int(input_ids.max()) >= self.unit_offset + self.num_units:
            raise ValueError(f"token id {int(input_ids.max())} past the {self.num_units} unit tokens")
        text = llm.embed(input_ids.masked_fill(is_unit, 0))
        units = self.unit_embeddings((input_ids - self.unit_offset).clamp(min=0)).to(text.dtype)
        return torch.where(is_unit[..., None], units, text)

    def head(self, llm, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden [B, L, D]`` -> ``logits [B, L, V + num_units]``: the LLM's head, then one row per unit."""
        if not self.output_units:
            raise ValueError("fusion.output_units is false: the LM head predicts no unit tokens")
        weight = self.unit_head.weight if self.unit_head is not None else self.unit_embeddings.weight
        return torch.cat([llm.head(hidden), hidden @ weight.to(hidden.dtype).T], dim=-1)


def ties_embeddings(llm) -> bool:
    """Whether the LLM's output head shares its input embedding matrix (OPT, tiny Qwen3 ...)."""
    config = getattr(llm, "config", None)
    if config is None:
        return False
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "tie_word_embeddings", False))
