"""``slmzoo plot RUN_DIR``: loss (train and validation) and WER curves from ``metrics.jsonl`` as one PNG."""

from __future__ import annotations

from pathlib import Path

from slmzoo.training.metrics import read_metrics


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """Writes ``RUN_DIR/curves.png`` (or ``out``): left loss vs step, right validation WER vs step."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    if not rows:
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl rows to plot")

    def series(key):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, (ax_loss, ax_wer) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(*series("loss"), label="train loss")
    if series("val_loss")[0]:
        ax_loss.plot(*series("val_loss"), "o-", label="val loss")
    ax_loss.set(xlabel="step", ylabel="loss", yscale="log", title="loss")
    ax_loss.legend()
    steps, wer = series("val_wer")
    if steps:
        ax_wer.plot(steps, [100 * w for w in wer], "o-", label="val WER")
        if series("val_cer")[0]:
            ax_wer.plot(*(lambda s, c: (s, [100 * x for x in c]))(*series("val_cer")), "s--", label="val CER")
        ax_wer.legend()
    else:
        ax_wer.text(0.5, 0.5, "no validation (train --val)", ha="center", va="center", transform=ax_wer.transAxes)
    ax_wer.set(xlabel="step", ylabel="%", title="validation error rate")
    fig.suptitle(Path(run_dir).name)
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
