"""``prefix``: a row's audio embeddings go before its whole text prompt (Pengi).

The audio tags stay in the prompt template (the formatter inserts them); here they are removed and the
row's clips, in tag order, are placed first. Labels on the audio positions are ignored.
"""

from __future__ import annotations

import torch

from slmzoo.components import FusedInputs, Fusion
from slmzoo.fusion_utils import audio_tag_counts
from slmzoo.prompting import IGNORE_INDEX
from slmzoo_plugins.fusion.concat import fused_rows


class PrefixFusion(Fusion):
    def __init__(self, options=None, context=None):
        super().__init__()

    def fuse(self, llm, input_ids, attention_mask, audio_embeds, labels=None, padding_side="right") -> FusedInputs:
        """``input_ids [B, L]`` with audio tags, ``audio_embeds`` a list of ``[T_i, D]`` (valid frames only)
        -> ``inputs_embeds [B, sum_i T_i + L_b - tags_b, D]`` per row, re-padded on ``padding_side``."""
        counts = audio_tag_counts(llm, input_ids, attention_mask, len(audio_embeds))
        text_embeds = llm.embed(input_ids)
        keep = attention_mask.bool() & (input_ids != llm.audio_token_id)
        rows, row_labels, start = [], [], 0
        for b, n in enumerate(counts):
            audio = [a.to(text_embeds.dtype) for a in audio_embeds[start:start + n]]
            start += n
            rows.append(torch.cat([*audio, text_embeds[b][keep[b]]]))
            if labels is not None:
                num_audio = sum(a.shape[0] for a in audio)
                row_labels.append(torch.cat([labels.new_full((num_audio,), IGNORE_INDEX), labels[b][keep[b]]]))
        return fused_rows(rows, row_labels if labels is not None else None, padding_side)
