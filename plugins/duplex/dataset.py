"""Duplex cuts -> batches (NeMo's ``DuplexS2SDataset``, ``s2s_dataset.py`` 102-126).

A cut is one conversation: ``recording`` is the user channel, ``custom["target_audio"]`` the agent channel (same
duration, time-aligned), one supervision per turn with its ``speaker``. The batch holds::

    audio [B, S] @ encoder rate, audio_lens [B]                the user channel
    target_audio [B, S'] @ codec rate, target_audio_lens [B]   the agent channel, resampled explicitly (newer Lhotse
                                                               no longer resamples recordings in ``custom``)
    target_tokens [B, T], target_token_lens [B]                the agent's text channel, one id per frame
    target_texts                                               the agent's turns joined: BLEU references
    source_ids [B, L], source_id_lens [B]                      the user's turns as token ids (NeMo builds them too,
                                                               unused; here the target of ``duplex.user_ctc_weight``)

plus ``ids``, ``duration`` and ``issues`` like every slmzoo batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from slmzoo.audio import resample
from slmzoo.data.dataset import BadItem, good_examples, load_waveform
from slmzoo.prompting import pad_sequences
from slmzoo_plugins.duplex.token_channel import TextChannelIds, build_token_channel, text_to_ids


def load_target_audio(cut, sampling_rate: int) -> np.ndarray:
    """The agent channel of ``cut`` as mono float32 at ``sampling_rate``."""
    recording = (cut.custom or {}).get("target_audio")
    if recording is None:
        raise BadItem("no custom['target_audio'] (the agent channel of a duplex cut)", "missing")
    try:
        wave = recording.load_audio(offset=cut.start, duration=cut.duration)
    except FileNotFoundError as error:
        raise BadItem(f"missing target audio ({error})", "missing") from None
    except Exception as error:  # noqa: BLE001 - lhotse and soundfile raise many types; all mean unreadable
        raise BadItem(f"unreadable target audio ({type(error).__name__}: {error})", "unreadable") from None
    wave = np.asarray(wave, dtype=np.float32)
    wave = wave.mean(axis=0) if wave.ndim == 2 else wave
    if wave.size == 0 or not np.isfinite(wave).all():
        raise BadItem("target audio is empty or not finite", "nan")
    return resample(wave, recording.sampling_rate, sampling_rate)


def spoken_text(cut, roles) -> str:
    """The turns of ``roles`` in time order, joined."""
    from slmzoo_plugins.duplex.evaluation import agent_turns

    return " ".join(agent_turns(cut, roles))


def pad_ids(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``[B, L]`` ids and their lengths ``[B]``."""
    ids = torch.tensor(pad_sequences(rows, pad), dtype=torch.long).reshape(len(rows), -1)
    return ids, torch.tensor([len(r) for r in rows], dtype=torch.long)


def pad_waves(waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    audio = torch.zeros(len(waves), int(lengths.max()))
    for i, wave in enumerate(waves):
        audio[i, : len(wave)] = torch.from_numpy(wave)
    return audio, lengths


class DuplexDataset(torch.utils.data.Dataset):
    """Map-style Lhotse dataset: ``dataset[(batch_index, cuts)]`` -> the batch above."""

    def __init__(self, tokenizer, ids: TextChannelIds, settings, source_rate: int, target_rate: int,
                 strict: bool = False):
        self.to_ids = text_to_ids(tokenizer)
        self.ids, self.settings = ids, settings
        self.source_rate, self.target_rate = source_rate, target_rate
        self.strict = strict

    def tokens(self, cut) -> list[int]:
        return build_token_channel(cut.supervisions, cut.duration, self.settings.frame_length, self.source_rate,
                                   self.to_ids, self.ids, self.settings.output_roles)

    def __getitem__(self, item) -> dict[str, Any]:
        _index, cuts = item if isinstance(item, tuple) else (0, item)
        made, issues = good_examples(
            cuts, lambda cut: (load_waveform(cut, self.source_rate), load_target_audio(cut, self.target_rate)),
            self.strict)
        sources, targets = [source for _, (source, _) in made], [target for _, (_, target) in made]
        tokens = [self.tokens(cut) for cut, _ in made]
        texts = [spoken_text(cut, self.settings.output_roles) for cut, _ in made]
        names = [cut.id for cut, _ in made]
        batch: dict[str, Any] = {"ids": names, "issues": issues, "target_texts": texts,
                                 "duration": sum(len(w) for w in sources) / self.source_rate}
        if not sources:
            return batch
        batch["audio"], batch["audio_lens"] = pad_waves(sources)
        batch["target_audio"], batch["target_audio_lens"] = pad_waves(targets)
        batch["target_tokens"], batch["target_token_lens"] = pad_ids(tokens, self.ids.pad)
        sources_text = [self.to_ids(spoken_text(cut, self.settings.input_roles)) for cut, _ in made]
        batch["source_ids"], batch["source_id_lens"] = pad_ids(sources_text, self.ids.pad)
        return batch
