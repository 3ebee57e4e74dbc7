"""Step-wise decoding for continuous batching: a :class:`DecodingBatch` holds the rows being decoded (their KV
cache, attention mask and next positions) and the next-token logits of each row; rows join (:meth:`concat`) and
leave (:meth:`select`) between steps, and :meth:`step` feeds one token per row.

Rows keep their own positions (``next_position``), and a row's cache is left-padded to the batch's width with
masked zeros, so a row decodes as it would alone: the padding invariant of ``generate``. Built on the
``LanguageModel`` contract only (``hidden_states`` with a cache, ``head``, ``embed``); the cache may be a
transformers ``DynamicCache`` of full-attention layers (other caches: :func:`supports_cache` says no).
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
    positions (0 on left padding); ``next_position [B, 1]`` is the position of each row's next token."""

    cache: Any
    mask: torch.Tensor
    next_position: torch.Tensor
    logits: torch.Tensor
    audio_tokens: torch.Tensor | None = None  # [B] audio embeddings in each row's prompt, set by a prefill
    with_audio: torch.Tensor | None = None  # [B] bool: the row's prompt has audio (LanguageModel.with_audio)

    @property
    def size(self) -> int:
        return self.mask.shape[0]

    @classmethod
    def prefill(cls, llm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                with_audio: torch.Tensor | None = None) -> "DecodingBatch":
        """Left-padded ``inputs_embeds [B, L, D]`` and ``attention_mask [B, L]`` -> the batch after the prompt;
        ``with_audio [B]``: the rows whose prompt has audio."""
        mask = attention_mask.long()
        positions = default_position_ids(mask)
        with llm.with_audio(with_audio):
            hidden, cache = llm.hidden_states(inputs_embeds, mask, position_ids=positions, use_cache=True)
        return cls(cache, mask, positions[:, -1:] + 1, llm.head(hidden[:, -1:]).float()[:, -1],
                   with_audio=with_audio)

    def step(self, llm, tokens: torch.Tensor) -> None:
        """Feed ``tokens [B]`` (one per row): the cache grows by one position and ``logits`` predict the next."""
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
        if self.with_audio is not None:
            self.with_audio = self.with_audio[index]
        used = self.mask.any(0).nonzero()
        start = int(used[0]) if len(used) else self.mask.shape[1]
        self.mask = self.mask[:, start:]
        for layer in _layers(self.cache):
            layer.keys, layer.values = layer.keys[index, :, start:], layer.values[index, :, start:]

    @classmethod
    def concat(cls, batches: list["DecodingBatch"]) -> "DecodingBatch":
        """One batch of all rows, in order: each batch's cache and mask left-padded to the widest."""
        if len(batches) == 1:
            return batches[0]
        width = max(b.mask.shape[1] for b in batches)
        first = batches[0]
        for i, layer in enumerate(_layers(first.cache)):
            parts = [_layers(b.cache)[i] for b in batches]
            layer.keys = torch.cat([_left_pad(p.keys, width) for p in parts])
            layer.values = torch.cat([_left_pad(p.values, width) for p in parts])
        mask = torch.cat([F.pad(b.mask, (width - b.mask.shape[1], 0)) for b in batches])
        with_audio = None if any(b.with_audio is None for b in batches) else torch.cat([b.with_audio for b in batches])
        return cls(first.cache, mask, torch.cat([b.next_position for b in batches]),
                   torch.cat([b.logits for b in batches]), with_audio=with_audio)


def supports_cache(cache: Any) -> bool:
    """True for the caches :class:`DecodingBatch` can split and join: full-attention key/value layers."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer).__name__ == "DynamicLayer" for layer in layers)


def _layers(cache) -> list:
    if not supports_cache(cache):
        raise TypeError(f"step-wise decoding needs a cache of full-attention key/value layers, not {type(cache).__name__}")
    return cache.layers


def _left_pad(states: torch.Tensor, width: int) -> torch.Tensor:
    """``states [B, H, P, d]`` -> ``[B, H, width, d]``, zeros on the left (masked positions)."""
    return F.pad(states, (0, 0, width - states.shape[2], 0))
