"""Step-wise decoding for continuous batching: a :class:`DecodingBatch` holds the rows being decoded (their KV
cache, attention mask and next positions, and the state a memory fusion keeps for them) and the next-token logits
of each row; rows join (:meth:`concat`) and leave (:meth:`select`) between steps, and :meth:`step` feeds one token
per row.

Rows keep their own positions (``next_position``), and a row's cache is left-padded to the batch's width with
masked zeros, so a row decodes as it would alone: the padding invariant of ``generate``. Built on the
``LanguageModel`` contract only (``hidden_states`` with a cache, ``head``, ``embed``); the cache may be a
transformers ``DynamicCache`` of full-attention layers (other caches: :func:`supports_cache` says no).

A fusion that keeps audio for the LLM's layers to attend to (``cross_attention``, ``gated_xattn``,
``adapter_prompt``) hands its per-row state to the batch (:meth:`Fusion.decoding_state`): named objects with
``select(index)`` (keep rows, in place) and a classmethod ``concat(states)``, which pad and cut their rows the way
the batch pads and cuts its cache (an audio memory ``[B, M, D]`` with its mask ``[B, M]``, right-padded; text
self-attention inputs ``[B, P, D]``, left-padded like the cache). Before each step the batch puts its state back
into the fusion (:meth:`Fusion.use_decoding_state`), so rows of different requests join and leave alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from slmzoo.components import default_position_ids


@dataclass
class DecodingBatch:
    """``logits [B, V]`` (float32) predict each row's next token; ``mask [B, P]`` covers the ``P`` cached
    positions (0 on left padding); ``next_position [B, 1]`` is the position of each row's next token.
    ``fusion_state``: what ``fusion``'s hooks read for these rows (``None``: the fusion keeps nothing)."""

    cache: Any
    mask: torch.Tensor
    next_position: torch.Tensor
    logits: torch.Tensor
    fusion: Any = None
    fusion_state: dict[str, Any] | None = None
    # usage of each row's prompt, set by ``SpeechLM.prefill``: [B] audio embeddings and all prompt tokens (text + audio)
    audio_tokens: torch.Tensor | None = None
    prompt_tokens: torch.Tensor | None = None
    with_audio: torch.Tensor | None = None  # [B] bool: the row's prompt has audio (LanguageModel.with_audio)

    @property
    def size(self) -> int:
        return self.mask.shape[0]

    @classmethod
    def prefill(cls, llm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, fusion=None,
                with_audio: torch.Tensor | None = None) -> "DecodingBatch":
        """Left-padded ``inputs_embeds [B, L, D]`` and ``attention_mask [B, L]`` -> the batch after the prompt.
        ``fusion``: the fusion that just fused these inputs; its decoding state becomes the batch's. ``with_audio
        [B]``: the rows whose prompt has audio."""
        mask = attention_mask.long()
        positions = default_position_ids(mask)
        with llm.with_audio(with_audio):
            hidden, cache = llm.hidden_states(inputs_embeds, mask, position_ids=positions, use_cache=True)
        state = fusion.decoding_state() if fusion is not None else None
        return cls(cache, mask, positions[:, -1:] + 1, llm.head(hidden[:, -1:]).float()[:, -1], fusion, state,
                   with_audio=with_audio)

    def step(self, llm, tokens: torch.Tensor) -> None:
        """Feed ``tokens [B]`` (one per row): the cache grows by one position and ``logits`` predict the next."""
        if self.fusion_state is not None:
            self.fusion.use_decoding_state(self.fusion_state)
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.size, 1)], dim=1)
        with llm.with_audio(self.with_audio):
            hidden, self.cache = llm.hidden_states(llm.embed(tokens[:, None]), self.mask,
                                                   position_ids=self.next_position, past_key_values=self.cache,
                                                   use_cache=True)
        self.next_position = self.next_position + 1
        self.logits = llm.head(hidden[:, -1:]).float()[:, -1]

    def select(self, rows: list[int]) -> None:
        """Keep ``rows`` (in that order); cache columns no remaining row uses are cut off the left."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        self.mask, self.next_position, self.logits = self.mask[index], self.next_position[index], self.logits[index]
        self.audio_tokens, self.prompt_tokens, self.with_audio = (
            None if t is None else t[index.to(t.device)] for t in (self.audio_tokens, self.prompt_tokens, self.with_audio))
        start = first_used_column(self.mask)
        self.mask = self.mask[:, start:]
        for layer in _layers(self.cache):
            layer.keys, layer.values = layer.keys[index, :, start:], layer.values[index, :, start:]
        for state in (self.fusion_state or {}).values():
            state.select(index)

    @classmethod
    def concat(cls, batches: list["DecodingBatch"]) -> "DecodingBatch":
        """One batch of all rows, in order: each batch's cache and mask left-padded to the widest."""
        if len(batches) == 1:
            return batches[0]
        width = max(b.mask.shape[1] for b in batches)
        first = batches[0]
        for i, layer in enumerate(_layers(first.cache)):
            parts = [_layers(b.cache)[i] for b in batches]
            layer.keys = torch.cat([left_pad(p.keys, width, dim=2) for p in parts])
            layer.values = torch.cat([left_pad(p.values, width, dim=2) for p in parts])
        mask = torch.cat([left_pad(b.mask, width, dim=1) for b in batches])
        state = None
        if first.fusion_state is not None:
            state = {name: type(part).concat([b.fusion_state[name] for b in batches])
                     for name, part in first.fusion_state.items()}
        rows = [None if any(getattr(b, f) is None for b in batches) else torch.cat([getattr(b, f) for b in batches])
                for f in ("audio_tokens", "prompt_tokens", "with_audio")]
        return cls(first.cache, mask, torch.cat([b.next_position for b in batches]),
                   torch.cat([b.logits for b in batches]), first.fusion, state, *rows)


def supports_cache(cache: Any) -> bool:
    """True for the caches :class:`DecodingBatch` can split and join: full-attention key/value layers."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer).__name__ == "DynamicLayer" for layer in layers)


def _layers(cache) -> list:
    if not supports_cache(cache):
        raise TypeError(f"step-wise decoding needs a cache of full-attention key/value layers, not {type(cache).__name__}")
    return cache.layers


def left_pad(states: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``states`` padded with zeros (False for a bool mask) on the left of ``dim`` to ``width``: masked positions."""
    pad = [0, 0] * (states.dim() - 1 - dim) + [width - states.shape[dim], 0]
    return F.pad(states, pad)


def first_used_column(mask: torch.Tensor) -> int:
    """The first column of ``mask [B, P]`` any row uses (``P`` when none does): what is left of it can be cut."""
    used = mask.any(0).nonzero()
    return int(used[0]) if len(used) else mask.shape[1]
