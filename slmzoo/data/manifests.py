"""Manifests -> lazy Lhotse CutSets.

Two formats, detected per line: Lhotse cuts (``.jsonl`` / ``.jsonl.gz`` with ``"type": "MonoCut"`` etc.) and
NeMo-style lines (``audio_filepath``, ``duration``, ``text``, optional ``offset``; spoken QA adds
``question``/``answer`` or ``context``; an optional ``task`` names a card task). NeMo paths are relative to
the manifest. Nothing is loaded up front: files are read as the sampler walks them.

Several training manifests are mixed with weights: ``a.jsonl:0.7`` and ``b.jsonl:0.3`` (a trailing
``:WEIGHT`` on a path; default 1). Each is repeated endlessly and multiplexed, so a run is sized in steps.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache, partial
from pathlib import Path
from typing import Iterator

from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.audio import AudioSource

from slmzoo.data.issues import DataIssues

PROMPT_FIELDS = ("question", "context", "prompt")  # NeMo spoken QA / SALM fields that hold the user prompt
CUSTOM_FIELDS = (*PROMPT_FIELDS, "answer", "answer_units", "task", "lang", "target_lang")


def parse_manifest_spec(spec: str) -> tuple[Path, float]:
    """``"path[:weight]"`` -> ``(path, weight)``. ``C:\\x`` style drive colons are not weights."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            return Path(head), float(tail)
        except ValueError:
            pass
    return Path(spec), 1.0


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _first_record(path: Path) -> dict:
    with _open_text(path) as f:
        for line in f:
            if line.strip():
                return json.loads(line)
    return {}


def is_nemo_manifest(path: Path) -> bool:
    return "audio_filepath" in _first_record(path)


@lru_cache(maxsize=200_000)
def _audio_info(path: str) -> tuple[int, int, int]:
    """``(sampling_rate, frames, channels)`` from the file header only (cached: epochs re-read manifests)."""
    import soundfile as sf

    info = sf.info(path)
    return info.samplerate, info.frames, info.channels


class LazyNeMoIterator:
    """Iterates a NeMo JSONL manifest as MonoCuts; re-iterable (``CutSet.repeat`` walks it once an epoch).

    Lines whose audio is missing or unreadable, or whose duration is not positive, are reported to
    ``issues`` and skipped.
    """

    def __init__(self, path: str | Path, issues: DataIssues | None = None):
        self.path = Path(path)
        self.issues = issues or DataIssues()

    def __iter__(self) -> Iterator[MonoCut]:
        with _open_text(self.path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                cut = self._cut(json.loads(line), lineno)
                if cut is not None:
                    yield cut

    def _cut(self, item: dict, lineno: int) -> MonoCut | None:
        audio = Path(item["audio_filepath"])
        if not audio.is_absolute():
            audio = self.path.parent / audio
        cut_id = str(item.get("id") or f"{self.path.stem}-{lineno:07d}")
        if not audio.is_file():
            self.issues.report(cut_id, f"missing audio file {audio}", "missing")
            return None
        try:
            rate, frames, channels = _audio_info(str(audio))
        except Exception as error:  # soundfile raises several types; all mean unreadable
            self.issues.report(cut_id, f"unreadable audio {audio} ({error})", "unreadable")
            return None
        rec_duration = frames / rate
        offset = float(item.get("offset") or 0.0)
        duration = min(float(item.get("duration") or rec_duration - offset), rec_duration - offset)
        if not duration > 0:
            self.issues.report(cut_id, f"empty audio {audio}", "empty")
            return None
        recording = Recording(id=cut_id, sources=[AudioSource(type="file", channels=list(range(channels)),
                                                              source=str(audio))],
                              sampling_rate=rate, num_samples=frames, duration=rec_duration)
        text = item.get("text", item.get("answer", ""))
        custom = {k: item[k] for k in CUSTOM_FIELDS if item.get(k) is not None}
        return MonoCut(id=cut_id, start=offset, duration=duration, channel=0, recording=recording,
                       supervisions=[SupervisionSegment(id=cut_id, recording_id=cut_id, start=0.0,
                                                        duration=duration, channel=0, text=text)],
                       custom=custom or None)


def open_manifest(path: str | Path, issues: DataIssues | None = None) -> CutSet:
    """One manifest (Lhotse or NeMo JSONL, optionally gzipped) as a lazy CutSet."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such manifest")
    if is_nemo_manifest(path):
        return CutSet(LazyNeMoIterator(path, issues))
    return CutSet.from_jsonl_lazy(path).map(partial(_relative_to, path.parent.resolve()))


def _relative_to(folder: Path, cut):
    """A Lhotse cut with its relative audio paths (the recording's and those of recordings in ``custom``, such as a
    duplex cut's ``target_audio``) read relative to the manifest's folder, as NeMo manifests are."""
    recordings = [cut.recording] if cut.has_recording else []
    recordings += [v for v in (cut.custom or {}).values() if isinstance(v, Recording)]
    for recording in recordings:
        for source in recording.sources:
            if source.type == "file" and not Path(source.source).is_absolute():
                source.source = str(folder / source.source)
    return cut


def training_cuts(specs: list[str], issues: DataIssues | None = None, seed: int = 0) -> CutSet:
    """Endless, weighted mix of ``"path[:weight]"`` manifests for step-based training."""
    parsed = [parse_manifest_spec(s) for s in specs]
    # preserve_id: a bad item is named and counted once, not once per epoch under a new id
    sets = [open_manifest(p, issues).repeat(preserve_id=True) for p, _ in parsed]
    if len(sets) == 1:
        return sets[0]
    return CutSet.mux(*sets, weights=[w for _, w in parsed], seed=seed)


def eval_cuts(path: str | Path, issues: DataIssues | None = None) -> list:
    """A finite evaluation manifest, materialised (test sets are small) and sorted by duration for batching."""
    return sorted(open_manifest(path, issues), key=lambda c: (c.duration, c.id))
