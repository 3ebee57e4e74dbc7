"""Shared CLI plumbing: consoles, error reporting for people, card loading, number formatting.

Nothing here imports torch or transformers; commands that need them import lazily.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import click
import typer
from rich.console import Console

from slmzoo import saving
from slmzoo.card.errors import CardError
from slmzoo.catalog import human  # noqa: F401 (re-exported: commands format numbers with it)

DEBUG_ENV = "SLMZOO_DEBUG"

# -- options every card-taking command shares ------------------------------------------------------
PresetOpt = Annotated[Optional[str], typer.Option("--preset", "-p", help="A preset of the card, e.g. tiny.")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", metavar="KEY=VALUE",
                 help="Override a card key, e.g. --set llm.lora.r=16 (repeatable; the value is YAML)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


# -- consoles ----------------------------------------------------------------------------------------
def _width(stream) -> int | None:
    try:
        if stream.isatty():
            return None  # rich measures the terminal
    except (AttributeError, ValueError):
        pass
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    return max(columns, 200)  # pipes and files: wide, so that grep finds whole names in tables


def out() -> Console:
    """A console on the current stdout (resolved per call, so test runners that swap it work)."""
    return Console(file=sys.stdout, width=_width(sys.stdout), highlight=False)


def err() -> Console:
    return Console(file=sys.stderr, width=_width(sys.stderr), highlight=False)


def echo(text: str) -> None:
    """Plain text to stdout, exactly as given (YAML, JSON, Markdown)."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def echo_json(data: Any) -> None:
    echo(json.dumps(data, indent=2, default=str))


def escape(text: str) -> str:
    """``text`` safe inside rich markup (card paths and values may hold brackets)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def error_line(message: str) -> None:
    """``error: message`` on stderr; the message is plain text, never rich markup."""
    console = err()
    console.print("[bold red]error:[/] ", end="")
    console.print(message, markup=False, soft_wrap=True)


class CLIError(Exception):
    """An expected problem with a message for people; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _expected(error: BaseException) -> bool:
    """Errors that are about the input, not a bug: slmzoo's own error types, files, missing modules."""
    if isinstance(error, (OSError, ImportError)):
        return True
    return any(c.__module__.split(".")[0] in ("slmzoo", "slmzoo_plugins") and c.__name__ != "Exception"
               for c in type(error).__mro__ if issubclass(c, Exception) and c is not Exception)


def report(error: BaseException, unexpected_code: int = 1) -> int:
    """Print ``error`` for people and return the exit status."""
    if isinstance(error, CardError):
        console = err()
        for issue in error.issues:
            console.print("[bold red]error:[/] ", end="")
            console.print(str(issue), markup=False, soft_wrap=True)
        return 2
    if isinstance(error, CLIError):
        error_line(str(error))
        return error.code
    if _expected(error):
        error_line(str(error) or type(error).__name__)
        return 2
    error_line(f"{type(error).__name__}: {error}")
    err().print(f"[dim]this looks like a bug; {DEBUG_ENV}=1 shows the traceback[/]")
    return unexpected_code


def handle_errors(unexpected_code: int = 1) -> Callable:
    """Decorator for commands: errors become a message and an exit status, no traceback.

    ``SLMZOO_DEBUG=1`` lets every exception through with its traceback.
    """

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (typer.Exit, typer.Abort, click.exceptions.ClickException, click.exceptions.Exit):
                raise
            except KeyboardInterrupt:
                raise typer.Exit(130) from None
            except Exception as error:  # noqa: BLE001 - this is the one place that turns errors into exits
                if debug():
                    raise
                raise typer.Exit(report(error, unexpected_code)) from None

        return wrapper

    return decorate


# -- cards and models ------------------------------------------------------------------------------
def _prefixed_folder(arg: str, card_only: bool) -> Path | None:
    """The local folder of an ``hf-hub:`` or ``local-dir:`` argument (None for any other argument). From the Hub,
    ``card_only`` fetches the card and ``slmzoo.json`` alone."""
    from slmzoo.hub.sources import parse, resolve

    return resolve(arg, card_only=card_only) if parse(arg) is not None else None


def card_source(arg: str) -> str:
    """A card name, a card file, or a saved model (a folder holding ``card.yaml``, ``local-dir:PATH``,
    ``hf-hub:org/name[@rev]``): its card file."""
    path = _prefixed_folder(arg, card_only=True) or Path(arg)
    if path.is_dir():
        if (path / saving.CARD_FILE).is_file():
            saving.check_plugins(path)
            return str(path / saving.CARD_FILE)
        raise CLIError(f"{arg}: a folder, but not a saved slmzoo model (no {saving.CARD_FILE})")
    return arg


def load(arg: str, preset: str | None = None, sets: list[str] | None = None):
    from slmzoo.card.loader import load_card

    return load_card(card_source(arg), preset=preset, overrides=list(sets or []))


def saved_model_folder(model: str) -> Path:
    """The saved-model folder ``model`` names: a run folder's newest intact checkpoint, a saved model or checkpoint
    folder, ``local-dir:PATH`` or ``hf-hub:org/name[@rev]`` (downloaded); else ``model`` itself as a path."""
    from slmzoo.training.checkpoints import latest_checkpoint

    path = _prefixed_folder(model, card_only=False) or Path(model)
    if path.is_dir() and not saving.is_saved_model(path) and (path / "checkpoints").is_dir():
        newest = latest_checkpoint(path)
        if newest is None:
            raise CLIError(f"{model}: a run folder without a complete, intact checkpoint")
        path = newest
    return path


def load_model(model: str, preset: str | None = None, sets: list[str] | None = None, device: str | None = None):
    """A run folder (its newest intact checkpoint), a saved model / checkpoint folder, a release folder (imported
    on the fly: :mod:`slmzoo.importing`), ``local-dir:PATH`` and ``hf-hub:org/name[@rev]`` for any of them, or a
    card; in eval mode."""
    import slmzoo

    path = saved_model_folder(model)
    if path.is_dir():  # a saved model, or a release folder an importer recognises (imported on the fly)
        if sets or preset:
            raise CLIError(f"{model} is a saved model or a release: --preset and --set apply to cards only")
        return slmzoo.from_pretrained(path, device=device)
    from slmzoo.builder import build

    built = build(load(str(path), preset, sets))
    return built.to(device).eval() if device else built.eval()


# -- numbers ---------------------------------------------------------------------------------------
def exact(n: int | None) -> str:
    return "-" if n is None else f"{int(n):,}"


def rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if float(value).is_integer() else f"{value:.2f}"
