"""Cuts -> model batches: load (and augment) audio, build the chat prompt and response, collate.

A batch is the dict ``SpeechLM.forward`` takes (``audio [N, S]``, ``audio_lens [N]``, ``input_ids [B, L]``,
``attention_mask [B, L]``, ``labels [B, L]``) plus bookkeeping: ``ids``, ``duration`` (seconds of audio),
``issues`` (items skipped while building it, for the main process to count).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from slmzoo.audio import resample
from slmzoo.data.augment import augment_waveform, pick_speed
from slmzoo.data.issues import DataError
from slmzoo.data.manifests import PROMPT_FIELDS
from slmzoo.prompting import IGNORE_INDEX


class BadItem(Exception):
    def __init__(self, reason: str, kind: str):
        super().__init__(reason)
        self.reason, self.kind = reason, kind


def load_waveform(cut, sampling_rate: int) -> np.ndarray:
    """Mono float32 ``[S]`` at ``sampling_rate``; raises :class:`BadItem` for missing, empty or NaN audio."""
    try:
        wave = cut.load_audio()
    except FileNotFoundError as error:
        raise BadItem(f"missing audio ({error})", "missing") from None
    except Exception as error:  # lhotse/soundfile raise many types; all mean unreadable
        raise BadItem(f"unreadable audio ({type(error).__name__}: {error})", "unreadable") from None
    wave = np.asarray(wave, dtype=np.float32)
    wave = wave.mean(axis=0) if wave.ndim == 2 else wave
    if wave.size == 0:
        raise BadItem("empty audio", "empty")
    if not np.isfinite(wave).all():
        raise BadItem("audio has NaN or infinite samples", "nan")
    return resample(wave, cut.sampling_rate, sampling_rate)


def prompt_and_response(cut) -> tuple[str | None, str | None, str]:
    """``(prompt, task, response)``: QA items use their question as the prompt and answer as the response;
    others use the card's task instruction (``task`` field, else the default task) and the transcript."""
    custom = cut.custom or {}
    prompt = next((custom[k] for k in PROMPT_FIELDS if custom.get(k)), None)
    response = custom.get("answer")
    if response is None:
        response = " ".join(s.text or "" for s in cut.supervisions).strip()
    return prompt, custom.get("task"), response


def good_examples(cuts, make, strict: bool = False) -> tuple[list, list]:
    """``[(cut, make(cut))]`` for every cut ``make`` turns into an example, and the others as ``(id, reason, kind)``
    issues (with ``strict``, a :class:`DataError` at the first): one bad item never fails its batch."""
    made, issues = [], []
    for cut in cuts:
        try:
            made.append((cut, make(cut)))
        except BadItem as bad:
            if strict:
                raise DataError(f"{cut.id}: {bad.reason} (--strict stops at the first bad item)") from None
            issues.append((cut.id, bad.reason, bad.kind))
    return made, issues


class SpeechDataset(torch.utils.data.Dataset):
    """Map-style Lhotse dataset: ``dataset[(batch_index, cuts)]`` -> batch dict (see module doc)."""

    def __init__(self, processor, sampling_rate: int | None = None, max_text_tokens: int = 256, augment=None,
                 seed: int = 0, strict: bool = False):
        """``processor``: the model's :class:`slmzoo.processing.Processor` (prompts, tokens, collation);
        ``sampling_rate``: default the processor's."""
        self.processor = processor
        self.sampling_rate = sampling_rate or processor.sampling_rate
        self.max_text_tokens = max_text_tokens
        self.augment = augment
        self.seed = seed
        self.strict = strict

    def __getitem__(self, item) -> dict[str, Any]:
        index, cuts = item if isinstance(item, tuple) else (0, item)
        rng = np.random.default_rng([self.seed, index])
        made, issues = good_examples(cuts, lambda cut: self._example(cut, rng, index), self.strict)
        ids = [cut.id for cut, _ in made]
        waves, encoded = [wave for _, (wave, _) in made], [enc for _, (_, enc) in made]
        batch: dict[str, Any] = {"ids": ids, "issues": issues, "duration": sum(len(w) for w in waves) / self.sampling_rate}
        if not waves:
            return batch
        batch.update(self.processor.collate(waves, encoded))
        return batch

    def _example(self, cut, rng: np.random.Generator, index: int = 0):
        aug = self.augment if self.augment is not None and index >= self.augment.start_batch else None
        wave = load_waveform(cut, self.sampling_rate)
        if aug is not None and aug.speed_perturb:
            # Kaldi-style speed perturbation (tempo and pitch), by polyphase resampling: 25x faster than
            # Lhotse's cut.perturb_speed, which matters on a 2-core machine.
            factor = pick_speed(aug.speed_perturb, rng)
            if factor != 1.0:
                wave = resample(wave, round(self.sampling_rate * factor), self.sampling_rate)
        if aug is not None:
            wave = augment_waveform(wave, aug, self.sampling_rate, rng)
        prompt, task, response = prompt_and_response(cut)
        enc = self.processor.encode(prompt, num_audio=1, response=response, task=task)
        num_response = sum(1 for t in enc.labels if t != IGNORE_INDEX)
        if num_response > self.max_text_tokens:
            raise BadItem(f"response of {num_response} tokens exceeds train.max_text_tokens={self.max_text_tokens}",
                          "too_long")
        return wave, enc


def is_empty(batch: dict) -> bool:
    return "audio" not in batch
