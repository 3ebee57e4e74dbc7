"""``token_space``: discrete audio units as tokens of an extended vocabulary (SpeechGPT, AudioPaLM style).

The adapter (e.g. ``discrete_units``) returns unit ids ``[T_i]`` per clip instead of embeddings; the
vocabulary is extended by ``num_units`` tokens, and each audio tag of the prompt is replaced by the
embeddings of its unit tokens (placement exactly as ``concat``).

The new embedding rows live here, in the fusion, as their own table rather than as rows appended to the
LLM's embedding matrix: ``train.freeze: [llm]`` then freezes every original row and only the new rows
learn, with no gradient mask to keep in sync. They are initialised at the mean of the LLM's rows plus
noise of the rows' spread (what ``resize_token_embeddings`` does), so unit tokens start in-distribution.
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
        if table.device.type != "meta":
            with torch.no_grad():
                mean, std = table.mean(0), table.float().std(0).to(table.dtype)
                self.unit_embeddings.weight.copy_(mean + torch.randn_like(self.unit_embeddings.weight) * std)

    def fuse(self, llm, input_ids, attention_mask, audio_embeds, labels=None, padding_side="right") -> FusedInputs:
        """``audio_embeds``: one ``[T_i]`` long tensor of unit ids per clip (valid units only)."""
        if any(u.is_floating_point() for u in audio_embeds):
            raise TypeError("token_space fuses discrete unit ids [T_i] (an adapter that sets AdapterOutput.units, "
                            "e.g. discrete_units), not embeddings")
        if any(u.numel() and (int(u.min()) < 0 or int(u.max()) >= self.num_units) for u in audio_embeds):
            raise ValueError(f"unit id out of range [0, {self.num_units})")
        embeds = [self.unit_embeddings(u.long()) for u in audio_embeds]
        return super().fuse(llm, input_ids, attention_mask, embeds, labels=labels, padding_side=padding_side)
