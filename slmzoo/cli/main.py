"""The ``slmzoo`` command line.

``list``, ``show``, ``diff`` (without ``--arch``), ``schema``, ``plugins list`` and ``--help`` never import
torch or transformers: they read cards and plugin specs only. ``build``, ``generate`` and ``diff --arch``
import the model code when they run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from slmzoo.cli.common import (
    CLIError, JsonOpt, PresetOpt, SetOpt, echo, echo_json, err, exact, handle_errors, human,
    load, load_model, out, rate, report, debug,
)
from slmzoo.cli.plugins_cmd import plugins_app

app = typer.Typer(
    name="slmzoo",
    help="A plugin-based model zoo for speech LLMs: declarative cards, registered components.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(plugins_app, name="plugins")


def _version(value: bool) -> None:
    if value:
        from slmzoo import __version__

        echo(f"slmzoo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """A plugin-based model zoo for speech LLMs: declarative cards, registered components."""


# -- list ------------------------------------------------------------------------------------------
KIND_WORDS = {
    "encoder": "encoder", "encoders": "encoder",
    "adapter": "adapter", "adapters": "adapter",
    "fusion": "fusion", "fusions": "fusion",
    "llm": "llm", "llms": "llm",
}


def card_rows() -> list[dict[str, Any]]:
    """One row per registered card, read without validation (a card with problems is still listed)."""
    from slmzoo.card.errors import CardError
    from slmzoo.card.loader import card_index, resolve

    rows = []
    for name, path in sorted(card_index().items()):
        row: dict[str, Any] = {"name": name, "path": str(path)}
        try:
            data, _, _ = resolve(path)
        except CardError as error:
            row["error"] = str(error.issues[0]) if error.issues else str(error)
            rows.append(row)
            continue

        def kind(section: str, default: str | None = None) -> str | None:
            block = data.get(section)
            return block.get("type", default) if isinstance(block, dict) else default

        llm = data.get("llm") if isinstance(data.get("llm"), dict) else {}
        config = llm.get("config") if isinstance(llm.get("config"), dict) else {}
        row.update({
            "year": data.get("year"),
            "encoder": kind("encoder"),
            "adapter": kind("adapter"),
            "fusion": kind("fusion", "concat"),
            "llm": llm.get("pretrained") or config.get("model_type"),
            "llm_type": kind("llm"),
            "paper": data.get("paper"),
            "published_params": data.get("published_params"),
            "description": data.get("description", ""),
        })
        rows.append(row)
    return rows


def component_rows(kind: str | None = None, pattern: str = "*") -> list[dict[str, Any]]:
    from slmzoo.plugins import registry

    return [{"kind": s.kind, "name": s.name, "aliases": list(s.aliases), "plugin": s.provider,
             "description": s.description, "factory": s.factory}
            for s in registry().list(kind, pattern)]


def _md(value: Any) -> str:
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def add_sizes(rows: list[dict[str, Any]]) -> None:
    """Fill ``params`` of each row from a meta-device build (imports torch; no weights, no memory)."""
    from slmzoo.builder import build
    from slmzoo.card.loader import load_card

    for r in rows:
        if "error" not in r:
            r["params"] = build(load_card(r["path"]), meta=True).num_parameters()


def size_text(row: dict[str, Any]) -> str:
    """The meta-build count when computed (``--sizes``), else the published one, else blank."""
    if row.get("params") is not None:
        return human(row["params"])
    return f"{human(row['published_params'])} (published)" if row.get("published_params") else ""


def cards_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| Card | Year | Encoder | Adapter | Fusion | LLM | Size | Paper |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        paper = f"[link]({r['paper']})" if r.get("paper") else ""
        lines.append("| " + " | ".join(_md(v) for v in (
            r["name"], r.get("year"), r.get("encoder"), r.get("adapter"), r.get("fusion"), r.get("llm"),
            size_text(r))) + f" | {paper} |")
    return "\n".join(lines) + "\n"


def _broken_footer() -> None:
    from slmzoo.plugins import host

    broken = [p for p in host().plugins.values() if p.status == "broken"]
    if broken:
        names = ", ".join(f"{p.name} ({p.error})" for p in broken)
        err().print(f"[yellow]{len(broken)} broken plugin{'s' if len(broken) > 1 else ''}:[/] ", end="")
        err().print(f"{names}; see slmzoo plugins list", markup=False, soft_wrap=True)


@app.command("list")
@handle_errors()
def list_(
    what: Annotated[Optional[str], typer.Argument(
        help="cards, components, or one kind: encoders, adapters, fusion, llms.")] = None,
    pattern: Annotated[str, typer.Option("--filter", "-f", help="Glob over names, e.g. 'whisper*'.")] = "*",
    json_: JsonOpt = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="The cards table as Markdown.")] = False,
    sizes: Annotated[bool, typer.Option("--sizes", help="Count every card's parameters with a meta build "
                                        "(imports torch); otherwise the size shown is the published one.")] = False,
) -> None:
    """Cards and registered components. `slmzoo list cards`, `slmzoo list encoders` filter."""
    import fnmatch

    from slmzoo.card.errors import did_you_mean
    from slmzoo.plugins import host, registry

    kinds_known = sorted({s.kind for s in registry().list()} | set(KIND_WORDS.values()))
    words = dict(KIND_WORDS, **{k: k for k in kinds_known}, **{k + "s": k for k in kinds_known})
    show_cards, kinds = True, list(dict.fromkeys(
        [k for k in ("encoder", "adapter", "fusion", "llm")] + kinds_known))
    if what is not None:
        if what == "cards":
            kinds = []
        elif what == "components":
            show_cards = False
        elif what in words:
            show_cards, kinds = False, [words[what]]
        else:
            hint = did_you_mean(what, ["cards", "components", *words]) or "cards, components, " + ", ".join(
                sorted(KIND_WORDS))
            raise CLIError(f"list: unknown selection {what!r} ({hint})")
    if markdown and not show_cards:
        raise CLIError("--markdown renders the cards table: use `slmzoo list cards --markdown`")

    cards = [r for r in card_rows() if fnmatch.fnmatch(r["name"], pattern)] if show_cards else []
    if sizes:
        add_sizes(cards)
    components = {k: component_rows(k, pattern) for k in kinds}

    if json_:
        data: dict[str, Any] = {}
        if show_cards:
            data["cards"] = cards
        if kinds:
            data["components"] = components
        data["broken_plugins"] = [{"name": p.name, "error": p.error}
                                  for p in host().plugins.values() if p.status == "broken"]
        echo_json(data)
        return
    if markdown:
        echo(cards_markdown(cards))
        _broken_footer()
        return

    from rich.table import Table

    console = out()
    if show_cards:
        table = Table(title="cards", title_justify="left", title_style="bold")
        for column in ("card", "year", "encoder", "adapter", "fusion", "LLM", "size", "paper"):
            table.add_column(column, overflow="fold")
        for r in cards:
            if "error" in r:
                table.add_row(r["name"], "", "", "", "", "", "", f"[red]{r['error']}[/]")
                continue
            table.add_row(r["name"], str(r.get("year") or ""), r.get("encoder") or "", r.get("adapter") or "",
                          r.get("fusion") or "", r.get("llm") or "", size_text(r), r.get("paper") or "")
        console.print(table)
    for kind in kinds:
        rows = components[kind]
        if not rows and what is None and kind not in KIND_WORDS.values():
            continue
        table = Table(title=f"{kind}s" if not kind.endswith("s") else kind, title_justify="left",
                      title_style="bold")
        table.add_column("name")
        table.add_column("plugin")
        table.add_column("description", overflow="fold")
        for r in rows:
            name = r["name"] + (f" ({', '.join(r['aliases'])})" if r["aliases"] else "")
            table.add_row(name, r["plugin"], r["description"])
        console.print(table)
    _broken_footer()


# -- show ------------------------------------------------------------------------------------------
@app.command()
@handle_errors()
def show(
    card: Annotated[str, typer.Argument(help="A card name, a card file, or a saved model folder.")],
    preset: PresetOpt = None,
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """The fully resolved card (extends, preset and --set applied, defaults filled) as YAML."""
    resolved = load(card, preset, set_)
    if json_:
        echo_json(resolved.data)
    else:
        echo(resolved.to_yaml())


# -- schema ----------------------------------------------------------------------------------------
@app.command()
@handle_errors()
def schema(
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to a file instead of stdout.")] = None,
) -> None:
    """JSON Schema of cards, with every installed component's options."""
    import json

    from slmzoo.card.json_schema import card_json_schema

    text = json.dumps(card_json_schema(), indent=2) + "\n"
    if output is None:
        echo(text)
    else:
        output.write_text(text, encoding="utf-8")
        err().print(f"wrote {output}", markup=False)


# -- diff ------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    import json

    from slmzoo.card.diff import MISSING

    if value is MISSING:
        return "(absent)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value and "\n" not in value and value.strip() == value else json.dumps(value)
    return json.dumps(value)


def _arch(resolved) -> dict[str, Any]:
    """Parameter counts of a meta-device build: real sizes, no memory."""
    import slmzoo

    model = slmzoo.build(resolved, meta=True)
    rows = model.summary()
    total = model.num_parameters() if hasattr(model, "num_parameters") else sum(r["params"] for r in rows)
    trainable = (model.num_parameters(trainable_only=True) if hasattr(model, "num_parameters")
                 else sum(r["trainable"] for r in rows))
    return {"components": rows, "params": total, "trainable": trainable,
            "audio_tokens_per_second": model.audio_tokens_per_second()}


@app.command()
@handle_errors(unexpected_code=2)
def diff(
    left: Annotated[str, typer.Argument(help="A card name, file, or saved model folder.")],
    right: Annotated[str, typer.Argument(help="A card name, file, or saved model folder.")],
    preset: PresetOpt = None,
    set_: SetOpt = None,
    json_: JsonOpt = False,
    arch: Annotated[bool, typer.Option(
        "--arch", help="Also compare parameter counts (meta build), trainable parameters and audio tokens/s.")] = False,
) -> None:
    """What differs between two resolved cards, grouped by component. Exit 0 same, 1 different, 2 error.

    --preset and --set apply to both cards.
    """
    from slmzoo.card.diff import diff_cards, group

    a, b = load(left, preset, set_), load(right, preset, set_)
    changes = diff_cards(a.data, b.data)
    arch_data = {"left": _arch(a), "right": _arch(b)} if arch else None
    if json_:
        data: dict[str, Any] = {"left": a.source, "right": b.source, "preset": preset, "set": list(set_ or []),
                                "same": not changes, "changes": [c.to_json() for c in changes]}
        if arch_data is not None:
            data["arch"] = arch_data
        echo_json(data)
        raise typer.Exit(1 if changes else 0)

    from rich.table import Table

    console = out()
    if not changes:
        console.print(f"{left} and {right}: the resolved cards are identical", markup=False)
    else:
        table = Table(title=f"{len(changes)} difference{'s' if len(changes) != 1 else ''}", title_justify="left",
                      title_style="bold")
        table.add_column("section", style="bold")
        table.add_column("key")
        table.add_column(_escape(left), overflow="fold")
        table.add_column(_escape(right), overflow="fold")
        for i, (section, items) in enumerate(group(changes).items()):
            if i:
                table.add_section()
            for j, change in enumerate(items):
                key = change.path
                if change.kind == "replaced":
                    key = f"{change.path} (replaced: type {change.left.get('type')} -> {change.right.get('type')})"
                elif change.kind != "changed":
                    key = f"{change.path} ({change.kind})"
                table.add_row(section if j == 0 else "", _escape(key), _escape(_fmt(change.left)),
                              _escape(_fmt(change.right)))
        console.print(table)
    if arch_data is not None:
        _print_arch(arch_data, left, right)
    raise typer.Exit(1 if changes else 0)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _print_arch(data: dict[str, Any], left: str, right: str) -> None:
    from rich.table import Table

    table = Table(title="architecture (meta build)", title_justify="left", title_style="bold")
    table.add_column("component")
    for name in (left, right):
        table.add_column(f"params {name}", justify="right")
        table.add_column(f"trainable {name}", justify="right")
    rows_l = {r["component"]: r for r in data["left"]["components"]}
    rows_r = {r["component"]: r for r in data["right"]["components"]}
    for component in list(dict.fromkeys([*rows_l, *rows_r])):
        cells = []
        for rows in (rows_l, rows_r):
            r = rows.get(component)
            cells += [human(r["params"]) if r else "-", human(r["trainable"]) if r else "-"]
        table.add_row(component, *cells)
    table.add_section()
    table.add_row("total", human(data["left"]["params"]), human(data["left"]["trainable"]),
                  human(data["right"]["params"]), human(data["right"]["trainable"]), style="bold")
    console = out()
    console.print(table)
    console.print(f"audio tokens per second reaching the LLM: {rate(data['left']['audio_tokens_per_second'])} "
                  f"vs {rate(data['right']['audio_tokens_per_second'])}", markup=False)


# -- build -----------------------------------------------------------------------------------------
def summary_table(model, title: str):
    from rich.table import Table

    rows = model.summary()
    total = model.num_parameters() if hasattr(model, "num_parameters") else sum(r["params"] for r in rows)
    trainable = (model.num_parameters(trainable_only=True) if hasattr(model, "num_parameters")
                 else sum(r["trainable"] for r in rows))
    table = Table(title=title, title_justify="left", title_style="bold")
    for column, justify in (("component", "left"), ("type", "left"), ("params", "right"), ("exact", "right"),
                            ("trainable", "right"), ("output dim", "right"), ("frames/s", "right")):
        table.add_column(column, justify=justify)
    for r in rows:
        table.add_row(r["component"], str(r["type"]), human(r["params"]), exact(r["params"]),
                      human(r["trainable"]), "-" if r.get("output_dim") is None else str(r["output_dim"]),
                      rate(r.get("frames_per_second")))
    table.add_section()
    table.add_row("total", "", human(total), exact(total), human(trainable), "", "", style="bold")
    return table, rows, total, trainable


@app.command()
@handle_errors()
def build(
    card: Annotated[str, typer.Argument(help="A card name or file.")],
    preset: PresetOpt = None,
    set_: SetOpt = None,
    meta: Annotated[bool, typer.Option("--meta", help="The full-size model on the meta device: real parameter "
                                                      "counts, no memory.")] = False,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="save_pretrained into this folder.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Instantiate a card and print a summary per component."""
    if meta and out_dir is not None:
        raise CLIError("--meta builds have no weights to save: drop --meta to use --out")
    resolved = load(card, preset, set_)
    import slmzoo

    model = slmzoo.build(resolved, meta=meta)
    title = f"{resolved.name}" + (f" ({resolved.preset})" if resolved.preset else "") + (" on meta" if meta else "")
    table, rows, total, trainable = summary_table(model, title)
    tokens = model.audio_tokens_per_second()
    saved = None
    if out_dir is not None:
        saved = model.save_pretrained(out_dir)
    if json_:
        echo_json({"card": resolved.name, "preset": resolved.preset, "meta": meta, "components": rows,
                   "params": total, "trainable": trainable, "audio_tokens_per_second": tokens,
                   "saved": None if saved is None else str(saved)})
        return
    console = out()
    console.print(table)
    console.print(f"audio tokens per second reaching the LLM: {rate(tokens)}", markup=False)
    if saved is not None:
        console.print(f"saved to {saved}", markup=False)


# -- generate --------------------------------------------------------------------------------------
@app.command()
@handle_errors()
def generate(
    target: Annotated[str, typer.Argument(metavar="CARD_OR_DIR",
                                          help="A card name or file, a saved model / checkpoint folder, or a run folder.")],
    audio: Annotated[list[Path], typer.Option("--audio", "-a", help="An audio file (repeatable).")],
    prompt: Annotated[Optional[str], typer.Option(
        "--prompt", help="Instruction for every audio; default: the card's default task.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 128,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Generate text for audio files with a card (fresh weights), a saved model or a training run."""
    missing = [str(p) for p in audio if not p.is_file()]
    if missing:
        raise CLIError(f"no such audio file: {', '.join(missing)}")
    model = load_model(target, preset, set_)
    paths = [str(p) for p in audio]
    texts = model.generate(audio=paths, prompts=None if prompt is None else [prompt] * len(paths),
                           max_new_tokens=max_new_tokens)
    if json_:
        echo_json([{"audio": p, "text": t} for p, t in zip(paths, texts)])
        return
    for text in texts:
        echo(text)


# -- entry point -----------------------------------------------------------------------------------
from slmzoo.cli.train_cmds import register as _register_train_cmds  # noqa: E402
_register_train_cmds(app)  # train, eval, plot


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``slmzoo`` and ``python -m slmzoo``)."""
    try:
        app(args=argv, prog_name="slmzoo")
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as error:  # outside any command (plugin host start-up, parameter conversion)
        if debug():
            raise
        sys.exit(report(error))


if __name__ == "__main__":  # pragma: no cover
    main()
from slmzoo.cli.units_cmd import register as _register_units_cmds  # noqa: E402
_register_units_cmds(app)  # units fit
