"""Shared pieces of the fusions that keep audio out of the token sequence and attend to it as *memory*
(``cross_attention``, ``gated_xattn``, ``adapter_prompt``).

A memory fusion's ``fuse`` removes the audio tags (and their label positions) from the prompt, pads each
row's clips (concatenated in tag order) into ``memory [B, M, D]`` with ``memory_mask [B, M]``, and stores
them on the fusion (:class:`AudioMemory`) for the duration of the following forward or ``generate``: the
next ``fuse`` replaces them. The fusion's module hooks read them on every call, so tokens generated with
the KV cache attend to the audio too.

For continuous batching (:mod:`slmzoo.decoding`) the state is per row and leaves the fusion with its rows
(:class:`MemoryFusion`): ``fuse`` and ``release`` put *new* state objects on the fusion, never clearing the ones
a running batch still holds, and the batch joins (``concat``) and cuts (``select``) them with its KV cache.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from slmzoo.components import Fusion, lengths_to_mask


def pad_memory(audio_embeds: list[torch.Tensor], counts: list[int], dtype: torch.dtype):
    """Each row's clips ``[T_i, D]``, concatenated in order -> ``memory [B, M, D]`` (zeros past the end),
    ``memory_mask [B, M]`` True on real frames. ``counts[b]`` clips belong to row ``b``. No audio at all in
    the batch: ``(None, None)``, and the fusion's hooks leave the LLM alone."""
    if not audio_embeds:
        return None, None
    rows, start = [], 0
    for n in counts:
        empty = audio_embeds[0].new_zeros(0, audio_embeds[0].shape[-1])  # a row without audio: all-masked memory
        rows.append(torch.cat(audio_embeds[start:start + n]) if n else empty)
        start += n
    lengths = torch.tensor([r.shape[0] for r in rows], device=rows[0].device)
    memory = rows[0].new_zeros(len(rows), max(int(lengths.max()), 1), rows[0].shape[-1], dtype=dtype)
    for b, row in enumerate(rows):
        memory[b, : row.shape[0]] = row.to(dtype)
    return memory, lengths_to_mask(lengths, memory.shape[1])


class AudioMemory:
    """``memory [B, M, D]`` and ``mask [B, M]`` set by ``fuse`` (``None``: no audio); ``for_batch`` follows
    generate's batch expansion (beam search, ``num_return_sequences``: each row repeated ``k`` times,
    consecutively). Rows are right-padded: ``select`` and ``concat`` keep each row's frames where they were."""

    def __init__(self, memory: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        self.memory, self.mask = memory, mask

    def for_batch(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        memory, mask = self.memory, self.mask
        if batch != memory.shape[0]:
            if batch % memory.shape[0]:
                raise RuntimeError(f"hidden batch {batch} is not a multiple of the audio batch {memory.shape[0]}")
            k = batch // memory.shape[0]
            memory, mask = memory.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)
        return memory, mask

    def select(self, index: torch.Tensor) -> None:
        """Keep the rows ``index [B']`` (in place); frames past the longest remaining row are cut."""
        if self.memory is None:
            return
        self.memory, self.mask = self.memory[index], self.mask[index]
        width = max(int(self.mask.sum(1).max()), 1) if len(index) else 1
        self.memory, self.mask = self.memory[:, :width], self.mask[:, :width]

    @classmethod
    def concat(cls, states: list["AudioMemory"]) -> "AudioMemory":
        """The rows of every state, in order, right-padded with masked zeros to the widest memory."""
        if all(s.memory is None for s in states):
            return cls()
        if any(s.memory is None for s in states):
            raise ValueError("rows without any audio cannot join a decoding batch with audio memory")
        width = max(s.memory.shape[1] for s in states)
        memory = torch.cat([F.pad(s.memory, (0, 0, 0, width - s.memory.shape[1])) for s in states])
        return cls(memory, torch.cat([F.pad(s.mask, (0, width - s.mask.shape[1])) for s in states]))


class MemoryFusion(Fusion):
    """A fusion whose hooks read state ``fuse`` sets: one attribute per entry of ``STATE`` (name -> class of a
    fresh, empty state). ``release`` and the decoding-state pair of :class:`~slmzoo.components.Fusion` follow."""

    STATE: dict[str, type] = {"audio": AudioMemory}

    def __init__(self):
        super().__init__()
        self.release()

    def release(self) -> None:
        for name, state in self.STATE.items():  # new objects: a running decoding batch keeps the old ones
            setattr(self, name, state())

    def decoding_state(self) -> dict:
        return {name: getattr(self, name) for name in self.STATE}

    def use_decoding_state(self, state: dict) -> None:
        for name in self.STATE:
            setattr(self, name, state[name])


class MemoryAttention(nn.Module):
    """Multi-head attention of ``hidden [B, L, D]`` to ``memory [B, M, D]`` with ``memory_mask [B, M]`` (the
    same frames for every query) or ``[B, L, M]`` (per query: a causal mask).

    Masked memory frames get exactly zero weight, and a query that may see no frame at all gets a zero output
    (not NaN), so an output never depends on the other clips of the batch.
    """

    def __init__(self, dim: int, num_heads: int, memory_dim: int | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        memory_dim = memory_dim or dim
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(memory_dim, dim, bias=False)
        self.v_proj = nn.Linear(memory_dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, hidden: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        (b, length, _), m = hidden.shape, memory.shape[1]
        q = self.q_proj(hidden).view(b, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(memory).view(b, m, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(memory).view(b, m, self.num_heads, self.head_dim).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # [B, H, L, M]
        mask = memory_mask[:, None, None, :] if memory_mask.dim() == 2 else memory_mask[:, None]  # [B, 1, L|1, M]
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = F.softmax(scores, dim=-1) * mask.any(-1, keepdim=True).to(scores.dtype)
        out = (weights @ v).transpose(1, 2).reshape(b, length, -1)
        return self.o_proj(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                                 nn.Linear(dim * mult, dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
