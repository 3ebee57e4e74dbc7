"""``slmzoo units fit``: fit the k-means codebook of a token-mapping (``discrete_units``) card.

The discrete-units plugin adds this command through the ``slmzoo_register_commands`` hook; the module imports no
torch (``slmzoo --help`` imports it), the fitting code is imported when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from slmzoo.cli.common import JsonOpt, PresetOpt, SetOpt, echo, echo_json, handle_errors, load

units_app = typer.Typer(help="Discrete speech units: fit k-means codebooks.", no_args_is_help=True)


@units_app.command("fit")
@handle_errors()
def fit(
    card: Annotated[str, typer.Argument(help="A card name or file (its encoder and encoder.layer give the features).")],
    data: Annotated[str, typer.Option("--data", help="Manifest (Lhotse or NeMo JSONL) of the audio to cluster.")],
    out_file: Annotated[Path, typer.Option("--out", help="Codebook file: .npy or .safetensors.")] = Path("codebook.npy"),
    num_units: Annotated[Optional[int], typer.Option("--units", help="k; default: the card's adapter.num_units.")] = None,
    max_utterances: Annotated[Optional[int], typer.Option("--max-utterances", help="Use at most this many.")] = None,
    iters: Annotated[int, typer.Option("--iters", help="Lloyd iterations.")] = 50,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    preset: PresetOpt = None,
    sets: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the card's encoder over DATA, fit k-means, save the centroids to --out."""
    from slmzoo_plugins.adapters.units import fit_units

    summary = fit_units(load(card, preset, sets), data, out_file, num_units=num_units,
                        max_utterances=max_utterances, iters=iters, seed=seed)
    if as_json:
        echo_json(summary)
    else:
        echo(f"{summary['num_units']} units x {summary['dim']} dims from {summary['utterances']} utterances "
             f"({summary['frames']} frames) -> {summary['codebook']}\nuse it with: {summary['use']}")
