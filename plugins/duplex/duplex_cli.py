"""``slmzoo duplex turns``: one channel of a duplex corpus as a manifest of its turns (e.g. to train the ASR model
that scores a duplex model's speech on the agent's voice too); ``slmzoo duplex words``: a word-level tokenizer of
a corpus (one token per word, so that a turn's text fits its frames).

Added through the ``slmzoo_register_commands`` hook; imports no torch (``slmzoo --help`` imports this module).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmzoo.cli.common import CLIError, JsonOpt, echo, echo_json, handle_errors

duplex_app = typer.Typer(help="Duplex corpora: cut a channel into its turns; a word-level tokenizer.", no_args_is_help=True)


@duplex_app.command("turns")
@handle_errors()
def turns(
    data: Annotated[str, typer.Argument(help="Duplex cuts (Lhotse JSONL: user recording, custom['target_audio']).")],
    out_file: Annotated[Path, typer.Option("--out", help="Manifest of the turns (Lhotse JSONL).")],
    channel: Annotated[str, typer.Option("--channel", help="agent (custom['target_audio']) or user.")] = "agent",
    margin: Annotated[float, typer.Option("--margin", help="Seconds kept either side of each turn.")] = 0.05,
    as_json: JsonOpt = False,
) -> None:
    """Write one cut per turn of DATA's agent (or user) channel, with the turn's text as its supervision."""
    from slmzoo_plugins.duplex.turns import CHANNELS, write_turns

    if channel not in CHANNELS:
        raise CLIError(f"--channel {channel!r}: use {' or '.join(CHANNELS)}")
    if not Path(data).is_file():
        raise CLIError(f"{data}: no such manifest")
    summary = write_turns(data, out_file, channel, margin=margin)
    if as_json:
        echo_json(summary)
    else:
        echo(f"{summary['turns']} {channel} turns ({summary['seconds']} s) -> {summary['manifest']}")


@duplex_app.command("words")
@handle_errors()
def words(
    data: Annotated[str, typer.Argument(help="A manifest whose supervisions hold the corpus's text (duplex cuts).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Tokenizer folder (use it as --set llm.tokenizer=DIR).")],
    as_json: JsonOpt = False,
) -> None:
    """Save a word-level tokenizer of every word in DATA's turns."""
    from slmzoo_plugins.duplex.turns import write_word_tokenizer

    if not Path(data).is_file():
        raise CLIError(f"{data}: no such manifest")
    summary = write_word_tokenizer(data, out_dir)
    if as_json:
        echo_json(summary)
    else:
        echo(f"{summary['words']} words ({summary['vocab_size']} tokens with <unk> <s> </s> <pad>) -> "
             f"{summary['tokenizer']}\nuse it with: --set llm.tokenizer={summary['tokenizer']}")
