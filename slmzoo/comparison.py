"""``slmzoo compare RUN_DIR...``: finished training runs side by side, as one table and one chart.

Each run contributes what it recorded: its card (from the newest checkpoint: sizes and audio tokens per second
reaching the LLM, from a meta build), its ``metrics.jsonl`` (steps, final training loss, training audio-seconds
per second, padding efficiency, the curves) and the evaluations ``slmzoo eval RUN --data X.jsonl`` kept in
``RUN/eval/X.json`` (WER and CER per evaluation set).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slmzoo.training.metrics import read_metrics


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def run_summary(run_dir: str | Path, sizes: bool = True) -> dict[str, Any]:
    """One run's row: ``name``, ``card``, ``preset``, ``params``, ``trainable``, ``audio_tokens_per_second``,
    ``steps``, ``final_loss``, ``train_audio_per_second``, ``padding_efficiency``, ``wall_seconds`` and ``evals``
    (evaluation set -> its metrics)."""
    from slmzoo import saving
    from slmzoo.evaluation import EVAL_DIR
    from slmzoo.training.checkpoints import latest_checkpoint

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        raise FileNotFoundError(f"{run_dir}: not a training run (no metrics.jsonl rows)")
    train_rows = [r for r in rows if "loss" in r]
    summary: dict[str, Any] = {
        "name": run_dir.name, "path": str(run_dir),
        "steps": max((r["step"] for r in train_rows), default=0),
        "final_loss": train_rows[-1]["loss"] if train_rows else None,
        "train_audio_per_second": _mean([r.get("audio_sec_per_sec") for r in train_rows]),
        "padding_efficiency": _mean([r.get("padding_efficiency") for r in train_rows]),
        "wall_seconds": max((r.get("elapsed") or 0 for r in train_rows), default=None),
        "evals": {},
    }
    checkpoint = latest_checkpoint(run_dir, intact=False)
    if checkpoint is not None:
        card = saving.load_saved_card(checkpoint)
        summary.update(card=card.name, preset=card.preset, architecture=card.architecture)
        if sizes:
            from slmzoo.builder import build

            model = build(card, meta=True)
            summary.update(params=model.num_parameters(), trainable=model.num_parameters(trainable_only=True),
                           audio_tokens_per_second=model.audio_tokens_per_second())
    for file in sorted((run_dir / EVAL_DIR).glob("*.json")):
        record = json.loads(file.read_text(encoding="utf-8"))
        summary["evals"][file.stem] = {k: record.get(k) for k in ("wer", "cer", "bleu", "num_utterances",
                                                                   "normalizer", "rtfx")}
    return summary


def eval_sets(summaries: list[dict]) -> list[str]:
    return sorted({name for s in summaries for name in s["evals"]})


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 1) -> str:
    from slmzoo.catalog import human

    if value is None:
        return ""
    return human(value) if abs(value) >= 1000 else f"{value:.{digits}f}"


def compare_markdown(summaries: list[dict]) -> str:
    """The comparison as a Markdown table: one row per run, WER and CER per evaluation set."""
    sets = eval_sets(summaries)
    head = ["Run", "Card", "Params", "Trained", "Audio tokens/s", "Train audio s/s", "Padding eff.", "Steps",
            "Final loss", *[f"{name} WER / CER" for name in sets]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        card = (s.get("card") or "") + (f" ({s['preset']})" if s.get("preset") else "")
        cells = [s["name"], card, _num(s.get("params")), _num(s.get("trainable")),
                 _num(s.get("audio_tokens_per_second")), _num(s.get("train_audio_per_second")),
                 _pct(s.get("padding_efficiency")), str(s["steps"]), _num(s.get("final_loss"), 3)]
        for name in sets:
            e = s["evals"].get(name)
            cells.append(f"{_pct(e.get('wer'))} / {_pct(e.get('cer'))}" if e else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare_chart(summaries: list[dict], out: str | Path) -> Path:
    """A PNG: WER per evaluation set and run (bars), and the training loss curves overlaid (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = eval_sets(summaries)
    fig, (ax_wer, ax_loss) = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / max(len(sets), 1)
    positions = range(len(summaries))
    for i, name in enumerate(sets):
        values = [100 * (s["evals"].get(name, {}).get("wer") or 0) for s in summaries]
        ax_wer.bar([p + i * width for p in positions], values, width, label=name)
    ax_wer.set_xticks([p + width * (len(sets) - 1) / 2 for p in positions], [s["name"] for s in summaries],
                      rotation=30, ha="right")
    ax_wer.set(ylabel="WER %", title="word error rate")
    if sets:
        ax_wer.legend()
    else:
        ax_wer.text(0.5, 0.5, "no evaluations (slmzoo eval RUN --data ...)", ha="center", va="center",
                    transform=ax_wer.transAxes)
    for s in summaries:
        points = [(r["step"], r["loss"]) for r in read_metrics(s["path"]) if r.get("loss") is not None]
        if points:
            ax_loss.plot(*zip(*points), label=s["name"])
    ax_loss.set(xlabel="step", ylabel="training loss", yscale="log", title="training loss")
    ax_loss.legend(fontsize="small")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
