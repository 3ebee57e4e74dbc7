"""Pushing a model to the Hugging Face Hub: stage a saved-model folder, pin its backbones, write the model card,
upload it in one commit.

The staged folder is exactly what :func:`slmzoo.saving.save_pretrained` writes (so loading it back is
``from_pretrained``), with ``slmzoo.json`` extended by ``backbones`` (each ``pretrained`` source pinned to the
commit sha it resolves to now), plus ``README.md`` and the run's ``curves.png`` beside it. An existing README on the
Hub is kept unless ``overwrite_readme``.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmzoo import saving
from slmzoo.hub import readme as readme_mod
from slmzoo.hub.sources import HubError, HubSource, hub_errors, parse_repo, pin, pretrained_entries

README_FILE = "README.md"


@dataclass
class PushPlan:
    """What a push uploads (``slmzoo push --dry-run`` prints it)."""

    repo_id: str
    revision: str
    folder: Path  # the staging folder (removed when push_to_hub returns)
    trainable_only: bool
    front_matter: dict[str, Any]
    readme_kept: bool = False  # the Hub already has a README and overwrite_readme was not given
    url: str | None = None  # after the upload: the commit (or pull request) URL
    commit: str | None = None
    files: list[tuple[str, int]] = field(default_factory=list)  # (path in the repository, bytes)


def _backbones(folder: Path, trainable_only: bool) -> dict[str, dict[str, str]]:
    """Card key path -> ``{source, repo, revision}`` for every backbone source, pinned to its commit now
    (``{source}`` alone for a local folder).

    A trainable-only push must name backbones others can fetch: a local folder is refused. A full push records
    the sources it no longer needs (``slmzoo.json``'s ``sources``) for provenance and ``base_model``."""
    import yaml

    if trainable_only:
        data = yaml.safe_load((folder / saving.CARD_FILE).read_text(encoding="utf-8"))
        named = [(path, block["pretrained"]) for path, block in pretrained_entries(data)]
    else:
        named = [(section, source) for section, found in (saving.read_info(folder).get("sources") or {}).items()
                 for source in ([found] if isinstance(found, str) else found)]
    out = {}
    for path, source in named:
        pinned = pin(source)
        if pinned is None and trainable_only:
            raise HubError(f"{path}.pretrained is the local folder {source!r}: a trainable-only push needs every "
                           "backbone on the Hub (push it there and name it hf-hub:org/name), or push with --full")
        out[path] = {"source": source, **(pinned or {})}  # a local folder: recorded, not pinned
    return out


def stage(model, folder: Path, repo_id: str, trainable_only: bool | None = None, run_dir: Path | None = None,
          **readme_options) -> PushPlan:
    """Write what a push uploads into ``folder``. ``trainable_only`` None: trained weights only when some frozen
    backbone can be fetched from its source (:func:`slmzoo.saving.weight_keys`), else every weight."""
    keys = saving.weight_keys(model) if trainable_only in (None, True) else None
    saving.save_pretrained(model, folder, keys=keys, standalone=keys is None)
    partial = keys is not None
    info = saving.read_info(folder)
    info["backbones"] = _backbones(folder, partial)
    saving.seal(folder, info)
    run = None
    if run_dir is not None:
        from slmzoo.comparison import run_summary

        from slmzoo.training.metrics import read_metrics

        run = run_summary(run_dir, sizes=False)
        validated = [r for r in read_metrics(run_dir) if "val_loss" in r]
        run["validation"] = validated[-1] if validated else None  # the last validation: loss, WER, CER
        if (run_dir / readme_mod.CURVES_FILE).is_file():
            shutil.copyfile(run_dir / readme_mod.CURVES_FILE, folder / readme_mod.CURVES_FILE)
    inputs = readme_mod.ReadmeInputs(
        repo_id=repo_id, card=model.card, card_yaml=(folder / saving.CARD_FILE).read_text(encoding="utf-8"),
        components=model.summary(), backbones=info["backbones"], plugins=info.get("plugins") or [],
        trainable_only=partial, run=run, curves=(folder / readme_mod.CURVES_FILE).is_file(), **readme_options)
    (folder / README_FILE).write_text(readme_mod.render(inputs), encoding="utf-8")
    return PushPlan(repo_id=repo_id, revision="main", folder=folder, trainable_only=partial,
                    front_matter=readme_mod.front_matter(inputs))


def _token(token: str | None) -> str:
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubError("pushing needs a Hugging Face token: set HF_TOKEN or run `hf auth login`")
    return token


def push_to_hub(model, repo_id: str, *, revision: str | None = None, private: bool = False, create_pr: bool = False,
                commit_message: str | None = None, trainable_only: bool | None = None, dry_run: bool = False,
                overwrite_readme: bool = False, run_dir: str | Path | None = None, token: str | None = None,
                license: str | None = None, language: list[str] | None = None,
                datasets: list[str] | None = None) -> PushPlan:
    """Push ``model`` (a built or loaded slmzoo model) to ``repo_id`` (``org/name``) on the Hub; see the module doc.

    ``revision``: an existing branch (default ``main``); ``create_pr``: open a pull request against it instead.
    ``trainable_only``: True, False (every weight) or None (see :func:`stage`). ``run_dir``: the training run, for the
    model card's training summary, evaluation results and curves. ``dry_run``: stage and describe, upload nothing.
    Returns the plan, with the commit once uploaded."""
    from huggingface_hub import HfApi

    target = parse_repo(repo_id)
    if target.revision:
        raise HubError(f"{repo_id!r}: give the branch with --revision, not @ in the repository name")
    if create_pr and revision not in (None, "main"):
        raise HubError("--create-pr opens a pull request against main (huggingface_hub's upload_folder): leave out "
                       "--revision, or push to the branch itself")
    token = None if dry_run else _token(token)
    api = HfApi(token=token)
    work = Path(tempfile.mkdtemp(prefix="slmzoo-push-"))
    folder = work / "repo"
    try:
        plan = stage(model, folder, target.repo_id, trainable_only, Path(run_dir) if run_dir else None,
                     license=license, language=list(language or []), datasets=list(datasets or []))
        plan.revision = revision or "main"
        if not overwrite_readme and _remote_readme(api, HubSource(target.repo_id, revision), quiet=dry_run):
            (folder / README_FILE).unlink()
            plan.readme_kept = True
        plan.files = sorted((p.relative_to(folder).as_posix(), p.stat().st_size)
                            for p in folder.rglob("*") if p.is_file())
        if dry_run:
            return plan
        with hub_errors(target, action="write to"):
            api.create_repo(target.repo_id, private=private, exist_ok=True)
        if revision and revision != "main" and not create_pr:
            _require_branch(api, target.repo_id, revision)
        with hub_errors(HubSource(target.repo_id, revision), action="write to"):
            info = api.upload_folder(repo_id=target.repo_id, folder_path=folder, revision=revision,
                                     create_pr=create_pr, commit_message=commit_message or _message(model, plan))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    plan.url = info.pr_url or info.commit_url
    plan.commit = info.oid
    return plan


def _message(model, plan: PushPlan) -> str:
    what = "trained weights" if plan.trainable_only else "every weight"
    return f"Upload {model.card.name} with slmzoo ({what})"


def _remote_readme(api, source: HubSource, quiet: bool) -> bool:
    """Whether the Hub already has a README at the target (a missing repository or branch has none)."""
    from huggingface_hub import errors

    try:
        with hub_errors(source):
            try:
                return api.file_exists(source.repo_id, README_FILE, revision=source.revision)
            except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError):
                return False
    except HubError:
        if quiet:  # a dry run without access describes the push as if the repository were new
            return False
        raise


def _require_branch(api, repo_id: str, revision: str) -> None:
    from huggingface_hub import errors

    with hub_errors(repo_id):
        try:
            api.model_info(repo_id, revision=revision)
        except errors.RevisionNotFoundError:
            raise HubError(f"{repo_id}: no branch {revision!r} to push to: create it first "
                           f"(`hf repo branch create {repo_id} {revision}`), or push to main") from None
