"""``concat``: each audio tag in the prompt is replaced by that audio's embeddings (SALM, Qwen-Audio)."""

from __future__ import annotations

import torch

from slmzoo.components import FusedInputs, Fusion
from slmzoo.fusion_utils import audio_tag_counts, pad_rows
from slmzoo.prompting import IGNORE_INDEX


class ConcatFusion(Fusion):
    def __init__(self, options=None, context=None):
        super().__init__()

    def fuse(self, llm, input_ids, attention_mask, audio_embeds, labels=None, padding_side="right") -> FusedInputs:
        """``input_ids [B, L]`` with audio tags, ``audio_embeds`` a list of ``[T_i, D]`` (valid frames only).

        Returns ``inputs_embeds [B, L', D]`` where every tag became its ``T_i`` frames; labels there are
        ignored. Rows are re-padded on ``padding_side`` ("left" for generation).
        """
        text_embeds = self.embed_tokens(llm, input_ids)
        is_audio = input_ids == llm.audio_token_id
        audio_tag_counts(llm, input_ids, attention_mask, len(audio_embeds))
        rows, row_labels = [], []
        next_audio = 0
        for b in range(input_ids.shape[0]):
            valid = attention_mask[b].bool()
            pieces, label_pieces, start = [], [], 0
            positions = torch.nonzero(is_audio[b] & valid).flatten().tolist()
            keep = torch.nonzero(valid).flatten()
            first, last = int(keep[0]), int(keep[-1]) + 1
            start = first
            for pos in positions:
                audio = audio_embeds[next_audio].to(text_embeds.dtype)
                next_audio += 1
                pieces += [text_embeds[b, start:pos], audio]
                if labels is not None:
                    label_pieces += [labels[b, start:pos], labels.new_full((audio.shape[0],), IGNORE_INDEX)]
                start = pos + 1
            pieces.append(text_embeds[b, start:last])
            rows.append(torch.cat(pieces))
            if labels is not None:
                label_pieces.append(labels[b, start:last])
                row_labels.append(torch.cat(label_pieces))
        return fused_rows(rows, row_labels if labels is not None else None, padding_side)

    def embed_tokens(self, llm, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids [B, L]`` -> ``[B, L, D]``: the LLM's embeddings (a fusion with tokens of its own overrides it)."""
        return llm.embed(input_ids)


def fused_rows(rows: list[torch.Tensor], labels: list[torch.Tensor] | None, side: str) -> FusedInputs:
    """Rows of embeddings ``[L_b, D]`` (and their labels ``[L_b]``) -> one padded batch, padding on ``side``."""
    embeds, mask = pad_rows(rows, 0, side)
    out_labels = None if labels is None else pad_rows(labels, IGNORE_INDEX, side)[0]
    return FusedInputs(inputs_embeds=embeds, attention_mask=mask, labels=out_labels)
