"""``slmzoo codec fit``: fit the codebook of a card's ``spectral_kmeans`` codec on a corpus's agent speech.

Added through the ``slmzoo_register_commands`` hook; imports no torch (``slmzoo --help`` imports this module).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from slmzoo.cli.common import JsonOpt, PresetOpt, SetOpt, echo, echo_json, handle_errors, load

codec_app = typer.Typer(help="Speech codecs: fit a codebook on a corpus.", no_args_is_help=True)


@codec_app.command("fit")
@handle_errors()
def fit(
    card: Annotated[str, typer.Argument(help="A card whose codec is spectral_kmeans (e.g. duplex-s2s --preset tiny).")],
    data: Annotated[str, typer.Option("--data", help="Manifest: duplex cuts (their agent channel) or any audio.")],
    out_file: Annotated[Path, typer.Option("--out", help="Codebook file (.npy).")] = Path("codec.npy"),
    size: Annotated[Optional[int], typer.Option("--codes", help="V; default the card's codec.codebook_size.")] = None,
    max_utterances: Annotated[Optional[int], typer.Option("--max-utterances", help="Use at most this many.")] = None,
    iters: Annotated[int, typer.Option("--iters", help="Lloyd iterations.")] = 30,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    preset: PresetOpt = None,
    sets: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit the codec's k-means codebook on DATA's agent audio and save it to --out."""
    from slmzoo_plugins.duplex.spectral_codec import fit_codec

    summary = fit_codec(load(card, preset, sets), data, out_file, codebook_size=size, max_utterances=max_utterances,
                        iters=iters, seed=seed)
    if as_json:
        echo_json(summary)
    else:
        echo(f"{summary['codebook_size']} codes from {summary['utterances']} utterances ({summary['frames']} "
             f"spectra) -> {summary['codebook']}\nuse it with: {summary['use']}")
