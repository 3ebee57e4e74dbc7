"""The ``slmzoo`` command line.

``list``, ``show``, ``diff`` (without ``--arch``), ``schema``, ``plugins list`` and ``--help`` never import
torch or transformers: they read cards and plugin specs only. ``build``, ``generate`` and ``diff --arch``
import the model code when they run. Plugins add commands through the ``slmzoo_register_commands`` hook
(``slmzoo units`` comes from the discrete-units plugin).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer
from typer.core import TyperGroup

from slmzoo.cli import hub_cmds, serve_cmd, train_cmds
from slmzoo.cli.common import (
    CLIError,
    JsonOpt,
    PresetOpt,
    SetOpt,
    debug,
    echo,
    echo_json,
    err,
    exact,
    handle_errors,
    human,
    load,
    load_model,
    out,
    rate,
    report,
)
from slmzoo.cli.common import escape as _escape
from slmzoo.cli.plugins_cmd import plugins_app


class PluginCommandsGroup(TyperGroup):
    """The root command: slmzoo's own commands, then those plugins registered, looked up when asked (a plugin
    registered or removed in-process is seen). A plugin command named like one of slmzoo's is left out."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        own = super().list_commands(ctx)
        return own + [name for name in sorted(_plugin_commands()) if name not in own and _plugin_command(name)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name) or _plugin_command(name)
        broken = _broken_plugins() if command is None else []
        if broken:  # the command may be one a plugin that failed to load would have added (codec, units, ...)
            raise click.UsageError(f"No such command {name!r}, and {_describe_broken(broken)}: a command of theirs "
                                   "is missing with them. `slmzoo plugins list` shows why; reinstall the package "
                                   "that provides them (slmzoo's own: `pip install -e .` in its checkout).", ctx)
        return command


def _plugin_commands() -> dict:
    from slmzoo.plugins import registry

    return registry().commands


def _plugin_command(name: str) -> click.Command | None:
    """A plugin's command as a click command; one that typer cannot turn into a command is reported and left out
    (a broken plugin never takes the CLI down)."""
    spec = _plugin_commands().get(name)
    if spec is None:
        return None
    try:
        if isinstance(spec.command, typer.Typer):
            command = typer.main.get_group(spec.command)
        else:
            single = typer.Typer()
            single.command(name, help=spec.help)(spec.command)
            command = typer.main.get_command(single)
    except Exception as error:  # noqa: BLE001 - whatever a plugin got wrong, the other commands keep working
        err().print(f"[yellow]plugin {spec.provider}: command {name!r} cannot be used:[/] ", end="")
        err().print(f"{type(error).__name__}: {error}", markup=False, soft_wrap=True)
        return None
    command.name = name
    if spec.help and not command.help:
        command.help = spec.help
    return command


app = typer.Typer(
    name="slmzoo",
    cls=PluginCommandsGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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
SELECTIONS = ("cards", "components", "architectures", "kinds")


def _selection(what: str | None) -> tuple[bool, list[str], set[str]]:
    """``slmzoo list WHAT`` -> (show cards, component kinds to show, other tables: architectures, kinds)."""
    from slmzoo.card.errors import did_you_mean
    from slmzoo.catalog import kind_words
    from slmzoo.plugins import registry

    kinds = registry().kind_names()
    if what is None:
        return True, kinds, {"architectures"}
    if what == "cards":
        return True, [], set()
    if what == "components":
        return False, kinds, set()
    if what in ("architectures", "architecture", "kinds"):
        return False, [], {"kinds" if what == "kinds" else "architectures"}
    words = kind_words()
    if what in words:
        return False, [words[what]], set()
    hint = did_you_mean(what, [*SELECTIONS, *words]) or ", ".join([*SELECTIONS, *sorted(words)])
    raise CLIError(f"list: unknown selection {what!r} ({hint})")


def _broken_plugins() -> list:
    from slmzoo.plugins import host

    return [p for p in host().plugins.values() if p.status == "broken"]


def _broken_names(broken: list) -> str:
    """``"a (error), b (error)"``."""
    return ", ".join(f"{p.name} ({p.error})" for p in broken)


def _describe_broken(broken: list) -> str:
    """``"2 plugins could not be loaded: a (error), b (error)"``."""
    return f"{len(broken)} plugin{'s' if len(broken) > 1 else ''} could not be loaded: {_broken_names(broken)}"


def _broken_footer() -> None:
    broken = _broken_plugins()
    if broken:
        err().print(f"[yellow]{len(broken)} broken plugin{'s' if len(broken) > 1 else ''}:[/] ", end="")
        err().print(f"{_broken_names(broken)}; see slmzoo plugins list", markup=False, soft_wrap=True)


@app.command("list")
@handle_errors()
def list_(
    what: Annotated[Optional[str], typer.Argument(
        help="cards, components, architectures, kinds, or one kind: encoders, adapters, fusion, llms, ...")] = None,
    pattern: Annotated[str, typer.Option("--filter", "-f", help="Glob over names, e.g. 'whisper*'.")] = "*",
    json_: JsonOpt = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="The cards table as Markdown.")] = False,
    sizes: Annotated[bool, typer.Option("--sizes", help="Count every card's parameters with a meta build "
                                        "(imports torch); otherwise the size shown is the published one.")] = False,
) -> None:
    """Cards, registered components and architectures. `slmzoo list cards`, `slmzoo list encoders` filter."""
    import fnmatch

    from slmzoo import catalog
    from slmzoo.plugins import host

    show_cards, kinds, tables = _selection(what)
    if markdown and not show_cards:
        raise CLIError("--markdown renders the cards table: use `slmzoo list cards --markdown`")
    cards = [r for r in catalog.card_rows() if fnmatch.fnmatch(r["name"], pattern)] if show_cards else []
    if sizes:
        catalog.add_sizes(cards)
    components = {k: catalog.component_rows(k, pattern) for k in kinds}
    architectures = catalog.architecture_rows(pattern) if "architectures" in tables else None
    kind_table = catalog.kind_rows() if "kinds" in tables else None

    if json_:
        data: dict[str, Any] = {}
        if show_cards:
            data["cards"] = cards
        if kinds:
            data["components"] = components
        if architectures is not None:
            data["architectures"] = architectures
        if kind_table is not None:
            data["kinds"] = kind_table
        data["broken_plugins"] = [{"name": p.name, "error": p.error}
                                  for p in host().plugins.values() if p.status == "broken"]
        echo_json(data)
        return
    if markdown:
        echo(catalog.cards_markdown(cards))
        _broken_footer()
        return
    console = out()
    if show_cards:
        groups = catalog.by_architecture(cards)
        for architecture, group in groups:
            console.print(_cards_table(group, "cards" if len(groups) == 1 else f"cards: {architecture}"))
    for kind in kinds:
        if components[kind] or what is not None or kind in _builtin_kinds():
            console.print(_components_table(kind, components[kind]))
    if architectures is not None:
        console.print(_architectures_table(architectures))
    if kind_table is not None:
        console.print(_kinds_table(kind_table))
    _broken_footer()


def _builtin_kinds() -> set[str]:
    from slmzoo.builtin import KINDS

    return {k.name for k in KINDS}


def _table(title: str, *columns: str):
    from rich.table import Table

    table = Table(title=title, title_justify="left", title_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _cards_table(cards: list[dict[str, Any]], title: str = "cards"):
    """One architecture's cards: a column per section of that architecture."""
    from slmzoo.catalog import card_columns, size_text

    sections = card_columns(cards)
    table = _table(title, "card", "year", *[c.upper() if c == "llm" else c.replace("_", " ") for c in sections],
                   "size", "paper")
    for r in cards:
        if "error" in r:
            table.add_row(r["name"], *[""] * (len(table.columns) - 2), f"[red]{_escape(r['error'])}[/]")
            continue
        table.add_row(r["name"], str(r.get("year") or ""), *[r.get(c) or "" for c in sections], size_text(r),
                      r.get("paper") or "")
    return table


def _components_table(kind: str, rows: list[dict[str, Any]]):
    from slmzoo.plugins import registry

    spec = registry().kinds.get(kind)
    table = _table(spec.title if spec else f"{kind}s", "name", "plugin", "description")
    for r in rows:
        name = r["name"] + (f" ({', '.join(r['aliases'])})" if r["aliases"] else "")
        table.add_row(name, r["plugin"], r["description"])
    return table


def _architectures_table(rows: list[dict[str, Any]]):
    table = _table("architectures", "name", "plugin", "sections", "description")
    for r in rows:
        sections = ", ".join(s["name"] + (f" ({s['kind']})" if s["kind"] != s["name"] else "")
                             + ("" if s["required"] else "?") for s in r["sections"])
        table.add_row(r["name"], r["plugin"], sections, r["description"])
    return table


def _kinds_table(rows: list[dict[str, Any]]):
    table = _table("component kinds", "kind", "plugin", "components", "contract", "description")
    for r in rows:
        table.add_row(r["name"], r["plugin"] or "-", str(r["components"]), r["base"] or "-", r["description"])
    return table


# -- show ------------------------------------------------------------------------------------------
@app.command()
@handle_errors()
def show(
    card: Annotated[str, typer.Argument(help="A card name, a card file, a saved model folder, or hf-hub:org/name[@rev].")],
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
    return {"components": model.summary(), "params": model.num_parameters(),
            "trainable": model.num_parameters(trainable_only=True),
            "audio_tokens_per_second": model.audio_tokens_per_second()}


@app.command()
@handle_errors(unexpected_code=2)
def diff(
    left: Annotated[str, typer.Argument(help="A card name, file, saved model folder, or hf-hub:org/name[@rev].")],
    right: Annotated[str, typer.Argument(help="A card name, file, saved model folder, or hf-hub:org/name[@rev].")],
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
def summary_table(model, title: str, rows: list[dict[str, Any]], total: int, trainable: int):
    """The build summary: one row per component, then the totals."""
    from rich.table import Table

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
    return table


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
    rows, total, trainable = model.summary(), model.num_parameters(), model.num_parameters(trainable_only=True)
    table = summary_table(model, title, rows, total, trainable)
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
                                          help="A card name or file, a saved model / checkpoint folder, a run "
                                               "folder, or hf-hub:org/name[@rev].")],
    audio: Annotated[list[Path], typer.Option("--audio", "-a", help="An audio file (repeatable).")],
    prompt: Annotated[Optional[str], typer.Option(
        "--prompt", help="Instruction for every audio; default: the card's default task.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 128,
    speech_out: Annotated[Optional[Path], typer.Option(
        "--out", help="Models that speak (duplex, discrete-unit cards): write the spoken answer as WAV (with several --audio, "
        "NAME-1.wav, NAME-2.wav, ...).")] = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Generate text for audio files with a card (fresh weights), a saved model or a training run; a model that
    speaks also answers in speech (--out)."""
    missing = [str(p) for p in audio if not p.is_file()]
    if missing:
        raise CLIError(f"no such audio file: {', '.join(missing)}")
    model = load_model(target, preset, set_)
    paths = [str(p) for p in audio]
    if speech_out is not None:
        texts, written = _speak(model, paths, speech_out, prompt, max_new_tokens)
    else:
        texts = model.generate(audio=paths, prompts=None if prompt is None else [prompt] * len(paths),
                               max_new_tokens=max_new_tokens)
        written = [None] * len(paths)
    if json_:
        echo_json([{"audio": p, "text": t, **({"speech": w} if w else {})} for p, t, w in zip(paths, texts, written)])
        return
    for text in texts:
        echo(text)


def _speak(model, paths: list[str], out_path: Path, prompt: str | None,
           max_new_tokens: int) -> tuple[list[str], list[str]]:
    """The text and spoken answers of a model that speaks (``generate_speech``), the WAVs written to ``out_path``."""
    speaks = getattr(model, "speaks", None)
    if speaks is None or not speaks():
        raise CLIError(f"--out writes a spoken answer; a {model.card.architecture} model answers in text only")
    import soundfile as sf

    result = model.generate_speech(paths, prompts=None if prompt is None else [prompt] * len(paths),
                                   max_new_tokens=max_new_tokens)
    names = [out_path] if len(paths) == 1 else [out_path.with_name(f"{out_path.stem}-{i + 1}{out_path.suffix or '.wav'}")
                                                 for i in range(len(paths))]
    for name, wave in zip(names, result.audio):
        name.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(name), wave.numpy(), result.sampling_rate)
    return result.texts, [str(n) for n in names]


# -- import ----------------------------------------------------------------------------------------
@app.command("import")
@handle_errors()
def import_(
    source: Annotated[str, typer.Argument(help="A released checkpoint: hf-hub:org/name[@rev], local-dir:PATH or a "
                                               "local folder as the Hub holds it.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="The slmzoo model folder to write.")],
    card: Annotated[Optional[str], typer.Option(
        "--card", help="The zoo card to map the release onto; default: the one its importer names.")] = None,
    json_: JsonOpt = False,
) -> None:
    """A released speech LLM as a standalone slmzoo model folder (its card, weights, tokenizer)."""
    from slmzoo.hub.sources import parse, resolve
    from slmzoo.importing import find_importer, import_to

    folder = resolve(source) if parse(source) is not None else Path(source)
    if not folder.is_dir():
        raise CLIError(f"{source}: no such folder")
    spec = find_importer(folder, card)  # an unrecognised release fails before anything is built
    saved = import_to(folder, out_dir, card=spec.card)
    if json_:
        echo_json({"source": source, "importer": spec.name, "card": spec.card, "saved": str(saved)})
        return
    echo(f"imported {source} with the {spec.name} importer (card {spec.card}); saved to {saved}")


# -- export ----------------------------------------------------------------------------------------
@app.command("export")
@handle_errors()
def export_(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="A saved model, a run folder, a release or a card.")],
    to: Annotated[str, typer.Option("--to", help="The checkpoint layout to write: transformers.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="The folder to write.")],
    preset: PresetOpt = None,
    set_: SetOpt = None,
) -> None:
    """A model whose card is a released architecture, in the reference's own layout (config, weights, processor)."""
    from slmzoo.importing import export_model

    written = export_model(load_model(model, preset, set_), to, out_dir)
    echo(f"exported to {written} ({to})")


# -- the commands defined elsewhere, after this file's own (the order of --help) ----------------------
train_cmds.register(app)  # train, eval, plot
hub_cmds.register(app)  # push, pull
serve_cmd.register(app)  # serve
app.add_typer(plugins_app, name="plugins")


# -- entry point -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``slmzoo`` and ``python -m slmzoo``)."""
    try:
        app(args=argv, prog_name="slmzoo")
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.exit(130)
    except click.ClickException as error:  # raised while click resolves a command (a missing plugin command)
        error.show()
        sys.exit(error.exit_code)
    except Exception as error:  # outside any command (plugin host start-up, parameter conversion)
        if debug():
            raise
        sys.exit(report(error))


if __name__ == "__main__":  # pragma: no cover
    main()
