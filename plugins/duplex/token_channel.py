"""The agent's text channel, one token slot per frame, as NeMo's ``build_token_channel`` builds it
(``s2s_dataset.py`` 145-190).

Segment-level alignment: at the frame a turn starts, BOS and then the turn's tokens are written one per frame, as
fast as possible, while the speech goes on; EOS is written at the frame the turn ends, overwriting whatever is there
(the last text token of a turn shorter than its text); a turn still running at the end of the cut gets no EOS. Every
other frame is PAD: the model learns *when* to speak by predicting PAD, BOS and EOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from lhotse.utils import compute_num_frames


@dataclass(frozen=True)
class TextChannelIds:
    """The three text ids the channel is built from."""

    bos: int
    eos: int
    pad: int


def text_to_ids(tokenizer) -> Callable[[str], list[int]]:
    """NeMo's ``text_to_ids``: ``tokenize`` + ``convert_tokens_to_ids``, no special tokens added."""
    return lambda text: tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))


def build_token_channel(supervisions: Sequence, duration: float, frame_length: float, sampling_rate: int,
                        to_ids: Callable[[str], list[int]], ids: TextChannelIds, roles: Sequence[str]) -> list[int]:
    """``[T]`` text ids of the turns spoken by ``roles``, ``T`` frames of ``frame_length`` seconds over
    ``duration`` (Lhotse's frame count: round half up at ``sampling_rate``)."""
    total = compute_num_frames(duration, frame_length, sampling_rate)
    tokens = [ids.pad] * total
    for supervision in supervisions:
        if supervision.speaker not in roles:
            continue
        turn = [ids.bos] + list(to_ids(supervision.text or ""))
        start = compute_num_frames(supervision.start, frame_length, sampling_rate)
        if start > total:
            continue  # the turn starts after the cut ends
        end = min(start + len(turn), total)
        tokens[start:end] = turn[: end - start]
        eos = compute_num_frames(supervision.end, frame_length, sampling_rate)
        if eos < total:
            tokens[eos] = ids.eos
    return tokens
