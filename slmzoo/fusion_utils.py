"""What fusions share: counting audio tags, removing them, and re-padding rows of different lengths.

A fusion rebuilds each row of the batch (audio frames in, tags out), so rows change length and are padded again
on the side the caller asks for: "right" for training, "left" for generation.
"""

from __future__ import annotations

import torch

from slmzoo.prompting import IGNORE_INDEX


def pad_rows(rows: list[torch.Tensor], value: float | int = 0, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``[L_b, ...]`` -> ``padded [B, max L_b, ...]`` (``value`` on ``side``) and ``mask [B, max L_b]``
    (long, 1 on real positions). At least one position wide, so an all-empty batch keeps its shape."""
    width = max([r.shape[0] for r in rows] + [1])
    first = rows[0]
    padded = first.new_full((len(rows), width, *first.shape[1:]), value)
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=first.device)
    for b, row in enumerate(rows):
        n = row.shape[0]
        span = slice(width - n, width) if side == "left" else slice(0, n)
        padded[b, span] = row
        mask[b, span] = 1
    return padded, mask


def audio_tag_counts(llm, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_audio: int) -> list[int]:
    """Audio tags per row of ``input_ids [B, L]``; checks they match the ``num_audio`` clips given."""
    counts = ((input_ids == llm.audio_token_id) & attention_mask.bool()).sum(-1).tolist()
    if sum(counts) != num_audio:
        raise ValueError(f"the batch has {sum(counts)} audio tags but {num_audio} audio segments")
    return counts


def drop_audio_tags(llm, input_ids, attention_mask, labels=None, padding_side="right"):
    """Remove the audio tags (and their label positions) from ``input_ids [B, L]``; rows are re-padded
    on ``padding_side`` with the pad id. Returns ``(input_ids, attention_mask, labels)``."""
    keep = attention_mask.bool() & (input_ids != llm.audio_token_id)
    ids, mask = pad_rows([input_ids[b][keep[b]] for b in range(input_ids.shape[0])], llm.pad_token_id or 0,
                         padding_side)
    new_labels = None
    if labels is not None:
        new_labels, _ = pad_rows([labels[b][keep[b]] for b in range(labels.shape[0])], IGNORE_INDEX, padding_side)
    return ids, mask.to(attention_mask.dtype), new_labels
