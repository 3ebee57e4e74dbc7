"""Batch decoding and scoring: WER and CER (jiwer, after Whisper-style text normalization), BLEU (sacrebleu) for
translation tasks, and RTFx (audio seconds / wall seconds of the whole decode, loading included).

Utterances are decoded in batches of similar duration (sorted), so little padding is computed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch

from slmzoo.data import DataIssues, eval_cuts, load_waveform, prompt_and_response
from slmzoo.data.dataset import BadItem

TRANSLATION_TASKS = ("ast", "s2tt", "translate", "translation")


def normalizer(name: str = "english") -> Callable[[str], str]:
    """``english``: Whisper's EnglishTextNormalizer (spellings, numbers to digits, punctuation);
    ``basic``: Whisper's BasicTextNormalizer (lower case, no punctuation); ``none``: whitespace only."""
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

    if name == "english":
        return EnglishTextNormalizer({})
    if name == "basic":
        return BasicTextNormalizer()
    if name == "none":
        return lambda s: " ".join(s.split())
    raise ValueError(f"unknown normalizer {name!r}: use english, basic or none")


def score(records: list[dict], normalize: str = "english", bleu: bool | None = None) -> dict:
    """WER / CER over ``records`` (``ref``, ``hyp``, optional ``task``); BLEU when any task is a translation."""
    import jiwer

    norm = normalizer(normalize)
    pairs = [(norm(r["ref"]), norm(r["hyp"])) for r in records]
    pairs = [(ref, hyp) for ref, hyp in pairs if ref.strip()]  # jiwer rejects empty references
    out = {"num_utterances": len(records)}
    if pairs:
        refs, hyps = [p[0] for p in pairs], [p[1] for p in pairs]
        out["wer"] = jiwer.wer(refs, hyps)
        out["cer"] = jiwer.cer(refs, hyps)
    else:
        out["wer"] = out["cer"] = None
    if bleu is None:
        bleu = any((r.get("task") or "") in TRANSLATION_TASKS for r in records)
    if bleu:
        import sacrebleu

        out["bleu"] = sacrebleu.corpus_bleu([r["hyp"] for r in records], [[r["ref"] for r in records]]).score
    return out


@torch.no_grad()
def transcribe(model, cuts: list, batch_size: int = 16, max_new_tokens: int = 128,
               issues: DataIssues | None = None) -> tuple[list[dict], float]:
    """Decode ``cuts`` (sorted by duration) in batches; returns records and the audio seconds decoded."""
    issues = issues or DataIssues()
    was_training = model.training
    model.eval()
    records, seconds = [], 0.0
    try:
        for start in range(0, len(cuts), batch_size):
            waves, prompts, items = [], [], []
            for cut in cuts[start:start + batch_size]:
                try:
                    wave = load_waveform(cut, model.sampling_rate)
                except BadItem as bad:
                    issues.report(cut.id, bad.reason, bad.kind)
                    continue
                prompt, task, response = prompt_and_response(cut)
                if prompt is None and task is not None:
                    prompt = model.formatter.config.tasks.get(task)
                waves.append(wave)
                prompts.append(prompt)
                items.append({"id": cut.id, "task": task, "ref": response, "duration": len(wave) / model.sampling_rate})
            if not waves:
                continue
            hyps = model.generate(waves, prompts=prompts, max_new_tokens=max_new_tokens)
            for item, hyp in zip(items, hyps):
                records.append({**item, "hyp": hyp})
                seconds += item["duration"]
    finally:
        model.train(was_training)
    return records, seconds


def evaluate(model, manifest: str | Path, batch_size: int = 16, out: str | Path | None = None,
             normalize: str = "english", max_new_tokens: int = 128, strict: bool = False,
             limit: int | None = None, asr=None) -> dict:
    """Decode a manifest and score it as the model's architecture does (``evaluate_cuts``); ``out`` gets one JSON
    line per utterance (``id``, ``ref``, ``hyp`` for text models). ``asr`` transcribes generated speech."""
    issues = DataIssues(strict=strict)
    start = time.perf_counter()
    cuts = eval_cuts(manifest, issues)
    if limit is not None:
        cuts = cuts[:limit]
    records, metrics, seconds = model.evaluate_cuts(cuts, batch_size, normalize=normalize,
                                                    max_new_tokens=max_new_tokens, issues=issues, asr=asr)
    wall = time.perf_counter() - start
    metrics.update(rtfx=seconds / wall if wall > 0 else None, audio_seconds=seconds, wall_seconds=wall,
                   skipped=issues.total, normalizer=normalize)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            for r in sorted(records, key=lambda r: r["id"]):
                f.write(json.dumps({k: v for k, v in r.items() if k != "audio"}, ensure_ascii=False) + "\n")
    return metrics


EVAL_DIR = "eval"


def run_folder_of(target: str | Path) -> Path | None:
    """The training run a model argument belongs to: a run folder itself, or a checkpoint inside one."""
    path = Path(target)
    if (path / "checkpoints").is_dir():
        return path
    if path.parent.name == "checkpoints" and (path.parent.parent / "metrics.jsonl").is_file():
        return path.parent.parent
    return None


def record_in_run(run_dir: Path, manifest: str | Path, metrics: dict, model: str) -> Path:
    """Keep an evaluation with the run it scores: ``RUN/eval/<manifest stem>.json`` (``slmzoo compare`` reads it)."""
    folder = Path(run_dir) / EVAL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = Path(str(manifest)).name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    path = folder / f"{name}.json"
    record = {"data": str(manifest), "model": str(model), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **metrics}
    path.write_text(json.dumps(record, indent=2), encoding="utf-8")
    return path
