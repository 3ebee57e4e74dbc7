"""``slmzoo push`` and ``slmzoo pull``: the Hugging Face Hub. ``register(app)`` adds them to the main CLI.

Authentication is huggingface_hub's own (``HF_TOKEN``, ``hf auth login``); ``HF_ENDPOINT`` selects the Hub and
``HF_HUB_OFFLINE=1`` reads from the cache only.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Optional

import typer

from slmzoo.cli.common import CLIError, JsonOpt, echo, echo_json, handle_errors, load_model, out


@handle_errors()
def push(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="A run folder (newest complete checkpoint), a checkpoint folder or a "
                                              "saved model: anything generate takes.")],
    repo_id: Annotated[str, typer.Argument(metavar="REPO_ID", help="The Hub repository, org/name.")],
    revision: Annotated[Optional[str], typer.Option("--revision", metavar="BRANCH",
                                                    help="An existing branch to commit to (default main).")] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
    create_pr: Annotated[bool, typer.Option("--create-pr", help="Open a pull request instead of committing.")] = False,
    commit_message: Annotated[Optional[str], typer.Option("--commit-message", metavar="TEXT")] = None,
    trainable_only: Annotated[bool, typer.Option(
        "--trainable-only", help="Upload the trained weights only; backbones load from their pinned sources "
        "(the default when the backbones were frozen).")] = False,
    full: Annotated[bool, typer.Option("--full", help="Upload every weight: the model loads from this repository "
                                                      "alone.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print files, sizes, front matter and target revision; "
                                                            "upload nothing.")] = False,
    overwrite_readme: Annotated[bool, typer.Option("--overwrite-readme",
                                                   help="Replace a README.md the repository already has.")] = False,
    license_: Annotated[Optional[str], typer.Option("--license", help="License of the weights (front matter).")] = None,
    language: Annotated[Optional[list[str]], typer.Option("--language", help="Language code (repeatable).")] = None,
    dataset: Annotated[Optional[list[str]], typer.Option("--dataset", help="Hub dataset id trained on "
                                                         "(repeatable).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Push a trained model to the Hugging Face Hub: weights, card, slmzoo.json, tokenizer and a model card."""
    from slmzoo.evaluation import run_folder_of
    from slmzoo.hub.push import push_to_hub

    if trainable_only and full:
        raise CLIError("--trainable-only and --full exclude each other")
    loaded = load_model(model)
    mode = True if trainable_only else False if full else None  # None: trained weights only if backbones froze
    plan = push_to_hub(loaded, repo_id, revision=revision, private=private, create_pr=create_pr,
                       commit_message=commit_message, trainable_only=mode,
                       dry_run=dry_run, overwrite_readme=overwrite_readme, run_dir=run_folder_of(model),
                       license=license_, language=language, datasets=dataset)
    if json_:
        echo_json({"repo_id": plan.repo_id, "revision": plan.revision, "trainable_only": plan.trainable_only,
                   "files": [{"path": p, "size": s} for p, s in plan.files], "front_matter": plan.front_matter,
                   "readme_kept": plan.readme_kept, "dry_run": dry_run, "url": plan.url, "commit": plan.commit})
        return
    if dry_run:
        _print_plan(plan)
        return
    kept = " (the README already on the Hub was kept)" if plan.readme_kept else ""
    out().print(f"pushed {plan.repo_id}@{plan.revision}: {plan.url}{kept}", markup=False)


def _print_plan(plan) -> None:
    from slmzoo.card.loader import dump_yaml
    from slmzoo.catalog import human

    what = "trained weights only" if plan.trainable_only else "every weight"
    echo(f"dry run: would push to {plan.repo_id} at revision {plan.revision} ({what}); nothing uploaded")
    for path, size in plan.files:
        echo(f"  {path}  {human(size)}B")
    if plan.readme_kept:
        echo("  README.md: kept (the repository has one; --overwrite-readme replaces it)")
    echo("front matter:")
    echo(dump_yaml(plan.front_matter))


@handle_errors()
def pull(
    repo: Annotated[str, typer.Argument(metavar="REPO_ID[@REVISION]",
                                        help="org/name, optionally @branch, tag or sha.")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Also copy the model into this folder.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Download a model (and the backbones it pins) into the huggingface_hub cache, for offline use."""
    from slmzoo import saving
    from slmzoo.hub.sources import backbone_folder, parse_repo, resolve

    folder = resolve(parse_repo(repo))
    saving.check_plugins(folder)
    card = saving.load_saved_card(folder)
    backbones = []
    if saving.read_info(folder).get("trainable_only"):  # loading will need the backbones: fetch them now
        from slmzoo.hub.sources import pretrained_entries

        backbones = [backbone_folder(block["pretrained"]) for _, block in pretrained_entries(card.data)]
    target = folder
    if out_dir is not None:
        if out_dir.exists() and any(out_dir.iterdir()):
            raise CLIError(f"--out {out_dir}: the folder is not empty")
        shutil.copytree(folder, out_dir, dirs_exist_ok=True)  # the cache's symlinks become plain files
        target = out_dir
    if json_:
        echo_json({"folder": str(target), "cache": str(folder), "backbones": backbones})
        return
    echo(str(target))


def register(app: typer.Typer) -> None:
    app.command("push")(push)
    app.command("pull")(pull)
