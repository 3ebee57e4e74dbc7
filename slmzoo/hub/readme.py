"""The ``README.md`` model card of a pushed model: YAML front matter the Hub reads, then a body for people.

Front matter: ``library_name: slmzoo``, ``pipeline_tag`` (``automatic-speech-recognition`` for a card whose only task
is ``asr``, else ``audio-text-to-text``), ``base_model`` (the backbones' Hub repositories) with
``base_model_relation``, ``tags``, ``license``, ``language`` and ``datasets`` when given, and ``model-index`` with
the run's kept evaluations. Body: what the model is, one row per component, how to run it, the training summary
(with ``curves.png`` when the run has one), the card, and the paper to cite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ASR_PIPELINE, AUDIO_TEXT_PIPELINE = "automatic-speech-recognition", "audio-text-to-text"
CURVES_FILE = "curves.png"


@dataclass
class ReadmeInputs:
    """What the model card says, gathered by the push (no model or network needed here)."""

    repo_id: str
    card: Any  # the resolved card (slmzoo.card.loader.ResolvedCard)
    card_yaml: str  # the card as pushed
    components: list[dict[str, Any]]  # Architecture.summary() rows
    backbones: dict[str, dict[str, str]]  # card key path -> {source, repo, revision}
    plugins: list[dict[str, Any]]  # slmzoo.json "plugins"
    trainable_only: bool
    run: dict[str, Any] | None = None  # slmzoo.comparison.run_summary() of the training run
    curves: bool = False
    license: str | None = None
    language: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)


def pipeline_tag(card) -> str:
    tasks = set(card.data.get("prompt", {}).get("tasks") or {"asr"})
    return ASR_PIPELINE if tasks <= {"asr"} else AUDIO_TEXT_PIPELINE


def front_matter(inputs: ReadmeInputs) -> dict[str, Any]:
    card = inputs.card
    meta: dict[str, Any] = {"library_name": "slmzoo", "pipeline_tag": pipeline_tag(card),
                            "license": inputs.license or "unknown"}
    if inputs.language:
        meta["language"] = inputs.language
    bases = list(dict.fromkeys(b["repo"] for b in inputs.backbones.values() if b.get("repo")))
    if bases:
        meta["base_model"] = bases
        # Frozen backbones with trained weights beside them are adapters; a full push may have changed them.
        meta["base_model_relation"] = "adapter" if inputs.trainable_only else "finetune"
    types = [card.data[s]["type"] for s in card.sections if isinstance(card.data.get(s), dict)]
    meta["tags"] = list(dict.fromkeys(["slmzoo", "speech", card.architecture, card.name, *types]))
    if inputs.datasets:
        meta["datasets"] = inputs.datasets
    results = _results(inputs)
    if results:
        meta["model-index"] = [{"name": inputs.repo_id.split("/")[-1], "results": results}]
    return meta


def _results(inputs: ReadmeInputs) -> list[dict[str, Any]]:
    out = []
    for name, record in ((inputs.run or {}).get("evals") or {}).items():
        metrics = [{"type": key, "name": key.upper(), "value": round(100 * record[key], 2)}
                   for key in ("wer", "cer") if isinstance(record.get(key), (int, float))]
        if isinstance(record.get("bleu"), (int, float)):
            metrics.append({"type": "bleu", "name": "BLEU", "value": round(record["bleu"], 2)})
        if metrics:
            out.append({"task": {"type": ASR_PIPELINE, "name": "Speech recognition"},
                        "dataset": {"name": name, "type": name}, "metrics": metrics})
    return out


def render(inputs: ReadmeInputs) -> str:
    """The whole ``README.md``."""
    from slmzoo.card.loader import dump_yaml

    card = inputs.card
    lines = ["---", dump_yaml(front_matter(inputs)).rstrip(), "---", "", f"# {inputs.repo_id.split('/')[-1]}", ""]
    preset = f" (preset `{card.preset}`)" if card.preset else ""
    lines += [f"A speech-augmented language model built with slmzoo from the `{card.name}` card{preset}, "
              f"architecture `{card.architecture}`.", ""]
    if card.data.get("description"):
        lines += [card.data["description"].strip(), ""]
    if card.data.get("paper"):
        lines += [f"Paper: {card.data['paper']}", ""]
    lines += _components(inputs) + _usage(inputs) + _training(inputs)
    lines += ["## The card", "", "```yaml", inputs.card_yaml.rstrip(), "```", ""]
    if card.data.get("paper"):
        lines += ["## Citation", "", f"Cite the paper this architecture comes from: {card.data['paper']}", ""]
    return "\n".join(lines)


def _components(inputs: ReadmeInputs) -> list[str]:
    from slmzoo.catalog import human

    sources = {path.split(".")[0]: b for path, b in inputs.backbones.items()}
    rows = ["## Components", "", "| Component | Type | Source | Parameters | Trainable |", "|---|---|---|---|---|"]
    for row in inputs.components:
        backbone = sources.get(row["component"])
        if backbone and backbone.get("repo"):
            source = f"[{backbone['repo']}](https://huggingface.co/{backbone['repo']}) @ `{backbone['revision'][:10]}`"
        elif backbone:
            source = backbone["source"]
        else:
            source = "-" if not row["params"] else "none (trained from scratch)"
        rows.append(f"| {row['component']} | {row['type']} | {source} | {human(row['params'])} | "
                    f"{human(row['trainable'])} |")
    weights = ("the trained weights only: each backbone is fetched from its pinned source when the model loads"
               if inputs.trainable_only else "every weight: the model loads from this repository alone")
    return rows + ["", f"This repository holds {weights}.", ""]


def _usage(inputs: ReadmeInputs) -> list[str]:
    dists = sorted({p["distribution"] for p in inputs.plugins if p.get("distribution")} | {"slmzoo"})
    return ["## Use", "", "```bash", f"pip install {' '.join(dists)}",
            f"slmzoo generate hf-hub:{inputs.repo_id} --audio speech.wav", "```", "", "```python", "import slmzoo", "",
            f'model = slmzoo.from_pretrained("hf-hub:{inputs.repo_id}")',
            'print(model.generate(audio=["speech.wav"])[0])', "```", "",
            "Loading reads `card.yaml` and safetensors weights only; no code from this repository runs.", ""]


def _training(inputs: ReadmeInputs) -> list[str]:
    run = inputs.run
    if not run:
        return []
    lines = ["## Training", "", f"- steps: {run.get('steps')}"]
    if run.get("train_audio_per_second") and run.get("wall_seconds"):
        seconds = run["train_audio_per_second"] * run["wall_seconds"]
        amount = f"{seconds / 3600:.1f} hours" if seconds >= 360 else f"{seconds / 60:.1f} minutes"
        lines.append(f"- audio seen: about {amount}")
    if run.get("final_loss") is not None:
        lines.append(f"- final training loss: {run['final_loss']:.4f}")
    validation = run.get("validation") or {}
    if validation:
        scores = "".join(f", {k[4:].upper()} {100 * validation[k]:.2f}%" for k in ("val_wer", "val_cer")
                         if isinstance(validation.get(k), (int, float)))
        lines.append(f"- last validation (step {validation.get('step')}): loss {validation['val_loss']:.4f}{scores}")
    for name, record in (run.get("evals") or {}).items():
        scores = ", ".join(f"{k.upper()} {100 * record[k]:.2f}%" for k in ("wer", "cer")
                           if isinstance(record.get(k), (int, float)))
        lines.append(f"- evaluation on `{name}`: {scores or 'no WER recorded'}")
    lines.append("")
    if inputs.curves:
        lines += [f"![training curves]({CURVES_FILE})", ""]
    return lines
