"""``slmzoo train``, ``eval``, ``plot`` and ``compare``. ``register(app)`` adds them to the main CLI.

Several training manifests are mixed with weights: ``--train a.jsonl:0.7 --train b.jsonl:0.3``.
Under ``accelerate launch -m slmzoo train ...`` the same command runs DDP/FSDP from the Accelerate config.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from slmzoo import saving
from slmzoo.cli.common import (
    CLIError,
    JsonOpt,
    PresetOpt,
    SetOpt,
    echo,
    echo_json,
    handle_errors,
    load,
    load_model,
    out,
    saved_model_folder,
)


def _setup_logging(run_dir: Path | None = None) -> None:
    # Under a launcher every process runs this command: the main one (RANK 0) alone writes train.log and
    # logs progress; the others report only warnings and errors.
    main_process = int(os.environ.get("RANK", "0")) == 0
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if run_dir is not None and main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=handlers, force=True)


@handle_errors()
def train(
    card: Annotated[str, typer.Argument(help="A card name or file.")],
    train_manifests: Annotated[list[str], typer.Option(
        "--train", help="Training manifest (Lhotse or NeMo JSONL); repeat to mix, PATH:WEIGHT sets a weight.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder: checkpoints, metrics.jsonl, tb/.")],
    preset: PresetOpt = None,
    sets: SetOpt = None,
    val: Annotated[Optional[str], typer.Option("--val", help="Validation manifest (loss and WER).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest complete checkpoint.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first bad data item.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")] = True,
    init: Annotated[Optional[str], typer.Option(
        "--init", help="Start from the weights of a trained model: a saved model, checkpoint or run folder, "
        "local-dir:PATH or hf-hub:org/name[@rev] (its tensors must fit the card's model).")] = None,
) -> None:
    """Train a card on manifests with Accelerate; writes checkpoints and metrics to --out."""
    from slmzoo.training.loop import RunOptions
    from slmzoo.training.loop import train as run

    _setup_logging(out_dir)
    resolved = load(card, preset, sets)
    init_folder = None
    if init is not None:
        init_folder = saved_model_folder(init)
        if not saving.is_saved_model(init_folder):
            raise CLIError(f"--init {init}: not a trained model (a saved model, checkpoint or run folder)")
    summary = run(resolved, RunOptions(train=list(train_manifests), out=out_dir, val=val, resume=resume,
                                       strict=strict, progress=progress, init=init_folder))
    if summary["is_main"]:
        out().print(f"trained to step {summary['step']} in {summary['wall_seconds']:.0f} s; "
                    f"checkpoint {summary['checkpoint']}; skipped {summary['issues']['skipped']} bad item(s)")


@handle_errors()
def evaluate(
    model: Annotated[str, typer.Argument(help="A run folder, a checkpoint / saved model folder, or a card.")],
    data: Annotated[str, typer.Option("--data", help="Manifest to decode (Lhotse or NeMo JSONL).")],
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Utterances per decoding batch.")] = 32,
    hyps: Annotated[Optional[Path], typer.Option("--out", help="Write hypotheses and references (JSONL).")] = None,
    as_json: JsonOpt = False,
    preset: PresetOpt = None,
    sets: SetOpt = None,
    normalizer: Annotated[str, typer.Option(help="Text normalization before WER: english, basic or none.")] = "english",
    max_new_tokens: Annotated[int, typer.Option(help="Longest hypothesis in tokens.")] = 128,
    limit: Annotated[Optional[int], typer.Option(help="Decode only the first N (shortest) utterances.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, ... (default: cuda if available).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first bad data item.")] = False,
    asr: Annotated[Optional[str], typer.Option("--asr", help="For models that speak: an ASR model (run folder, "
                                               "saved model or card) transcribing the generated speech.")] = None,
) -> None:
    """Decode a manifest in duration-sorted batches; report WER, CER (BLEU for translation) and RTFx; for
    speech-to-speech models, text BLEU, answer accuracy and (with --asr) ASR-BLEU."""
    import torch

    from slmzoo.evaluation import evaluate as run
    from slmzoo.evaluation import record_in_run, run_folder_of

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_model(model, preset, sets, device)
    scorer = load_model(asr, device=device) if asr else None
    metrics = run(loaded, data, batch_size=batch_size, out=hyps, normalize=normalizer,
                  max_new_tokens=max_new_tokens, strict=strict, limit=limit, asr=scorer)
    run_dir = run_folder_of(model)
    if run_dir is not None and limit is None:  # a whole evaluation of a run is kept with it, for slmzoo compare
        record_in_run(run_dir, data, metrics, model)
    if as_json:
        echo_json(metrics)
        return
    line = metrics_line(metrics)
    out().print(f"{line}  utterances {metrics['num_utterances']}  RTFx {metrics['rtfx']:.1f}"
                + (f"  skipped {metrics['skipped']}" if metrics["skipped"] else ""))


def metrics_line(metrics: dict) -> str:
    """One line of what an evaluation measured: WER/CER (BLEU) for text models, the duplex metrics for speech."""
    parts = []
    if "wer" in metrics:
        wer, cer = metrics["wer"], metrics["cer"]
        parts.append(f"WER {100 * wer:.2f}%  CER {100 * cer:.2f}%" if wer is not None else "no scored utterances")
    if "bleu" in metrics:
        parts.append(f"BLEU {metrics['bleu']:.2f}")
    for key, label in (("text_bleu", "text BLEU"), ("asr_bleu", "ASR-BLEU"), ("codec_asr_bleu", "codec ASR-BLEU")):
        if metrics.get(key) is not None:
            parts.append(f"{label} {metrics[key]:.2f}")
    for key, label in (("answer_accuracy", "answers right"), ("asr_answer_accuracy", "spoken answers right"),
                       ("codec_answer_accuracy", "codec ceiling")):
        if metrics.get(key) is not None:
            parts.append(f"{label} {100 * metrics[key]:.1f}%")
    return "  ".join(parts)


@handle_errors()
def plot(
    run_dir: Annotated[Path, typer.Argument(help="A run folder with metrics.jsonl.")],
    png: Annotated[Optional[Path], typer.Option("--out", help="PNG path (default RUN_DIR/curves.png).")] = None,
) -> None:
    """PNG of the loss and WER curves of a run."""
    from slmzoo.training.plot import plot_run

    out().print(str(plot_run(run_dir, png)))


@handle_errors()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Finished run folders (slmzoo train --out ...).")],
    chart: Annotated[Optional[Path], typer.Option("--out", help="Write the chart (WER bars, loss curves) as PNG.")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="The table as Markdown.")] = False,
    as_json: JsonOpt = False,
    sizes: Annotated[bool, typer.Option("--sizes/--no-sizes", help="Parameter counts and audio tokens/s from a meta "
                                        "build of each run's card.")] = True,
) -> None:
    """Runs side by side: sizes, throughput, padding efficiency, final loss, WER/CER of their evaluations."""
    from slmzoo.comparison import compare_chart, compare_markdown, eval_sets, run_summary

    summaries = [run_summary(run, sizes=sizes) for run in runs]
    if chart is not None:
        compare_chart(summaries, chart)
    if as_json:
        echo_json(summaries)
        return
    if markdown:
        echo(compare_markdown(summaries))
        return
    from rich.table import Table

    from slmzoo.catalog import human

    sets = eval_sets(summaries)
    table = Table(title=f"{len(summaries)} run{'s' if len(summaries) != 1 else ''}", title_justify="left",
                  title_style="bold")
    for column in ("run", "card", "params", "trained", "audio tok/s", "train audio s/s", "padding", "steps",
                   "final loss", *[f"{name} WER/CER" for name in sets]):
        table.add_column(column, overflow="fold")
    for s in summaries:
        pct = (lambda v: "" if v is None else f"{100 * v:.1f}%")
        table.add_row(s["name"], (s.get("card") or "") + (f" ({s['preset']})" if s.get("preset") else ""),
                      human(s.get("params")), human(s.get("trainable")),
                      "" if s.get("audio_tokens_per_second") is None else f"{s['audio_tokens_per_second']:g}",
                      "" if s["train_audio_per_second"] is None else f"{s['train_audio_per_second']:.1f}",
                      pct(s["padding_efficiency"]), str(s["steps"]),
                      "" if s["final_loss"] is None else f"{s['final_loss']:.3f}",
                      *[f"{pct(s['evals'][n]['wer'])} / {pct(s['evals'][n]['cer'])}" if n in s["evals"] else ""
                        for n in sets])
    out().print(table)
    if chart is not None:
        out().print(f"chart: {chart}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("eval")(evaluate)
    app.command("plot")(plot)
    app.command("compare")(compare)
