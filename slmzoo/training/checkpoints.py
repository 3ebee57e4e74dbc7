"""Atomic checkpoints: written to a temporary folder, flushed, then renamed into place.

A kill at any instant leaves every ``step-*`` folder complete: the rename is the commit. Old checkpoints are
pruned only after the new one is in place, so the last good one is never deleted first.

Layout of ``RUN_DIR/checkpoints/step-000300/``: a saved model (:mod:`slmzoo.saving`: what
``slmzoo.from_pretrained`` reads) plus ``optimizer.pt``, ``scheduler.pt``, ``rng-<rank>.pt`` and
``trainer_state.json`` (step, batches consumed, data issues); ``slmzoo.json``, sealed last, records the size and
sha256 of every file, so a checkpoint damaged after it was written (a truncated copy, a flipped byte) is found and
``--resume`` falls back to the newest intact one.

Weights and optimizer state are stored whole (not sharded) and keyed by parameter name, through
``torch.distributed.checkpoint.state_dict``: one process, DDP and FSDP (1 and 2) runs write the same files, and a
run can resume under another world size or wrapper.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from slmzoo import saving
from slmzoo.saving import weight_keys  # noqa: F401 (re-exported: the loop takes the keys before wrapping)

log = logging.getLogger("slmzoo.train")
STATE_FILE = "trainer_state.json"
PREFIX, TMP_PREFIX = "step-", ".tmp-step-"
FROM_MODEL = object()  # save_model's default keys: ask weight_keys() of the model itself


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of an interrupted save are ignored)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(run_dir: Path, intact: bool = True) -> Path | None:
    """The newest complete checkpoint; with ``intact``, the newest whose files all match their recorded sha256
    (a damaged one is skipped with a warning naming the file)."""
    for folder in reversed(complete_checkpoints(run_dir)):
        if not intact:
            return folder
        try:
            saving.verify(folder)
        except saving.CheckpointError as error:
            log.warning("skipping damaged checkpoint %s: %s", folder.name, error)
            continue
        return folder
    return None


def save_model(model, directory: Path, state_dict: dict | None = None, keys=FROM_MODEL) -> None:
    """A saved model of :func:`weight_keys` (the card as trained, sources kept), without the file manifest: the
    checkpoint seals the folder once its training state is written.

    ``state_dict``: the whole model's weights gathered from a sharded run; ``keys``: :func:`weight_keys` taken
    before the model was wrapped (FSDP1 renames parameters)."""
    keys = weight_keys(model) if keys is FROM_MODEL else keys
    saving.save_pretrained(model, directory, keys=keys, state_dict=state_dict, standalone=False, sealed=False)


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one


def optimizer_state(model, optimizer) -> dict:
    """The optimizer's whole state keyed by parameter name, on CPU. Collective: every rank of a distributed run
    must call it (FSDP gathers the shards); only the main process's copy is complete."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, _inner(optimizer), options=options)


def restore_optimizer(model, optimizer, state: dict) -> None:
    """Load :func:`optimizer_state` into a (possibly wrapped or sharded) model's optimizer; every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if any(isinstance(i, int) for group in state["param_groups"] for i in group["params"]):
        _inner(optimizer).load_state_dict(state)  # keyed by position: written by slmzoo 0.1's first checkpoints
        return
    # strict=False: a trainable parameter that never had a gradient (a loss term weighted 0, say speech-llama's
    # CTC head) has no optimizer state to save; it starts fresh on resume, as it would have gone on in the run.
    set_optimizer_state_dict(model, _inner(optimizer), state,
                             options=StateDictOptions(full_state_dict=True, strict=False))


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: Path, step: int, model, optimizer_state: dict, scheduler, state: dict, keep_last: int,
                    rank: int = 0, is_main: bool = True, weights: dict | None = None,
                    keys=FROM_MODEL) -> Path:
    """Write ``step-<step>`` atomically, then prune to the newest ``keep_last``. Returns the folder.

    ``optimizer_state`` comes from :func:`optimizer_state`; ``weights`` (default: the model's own) and ``keys``
    are as in :func:`save_model`."""
    root = checkpoint_dir(run_dir)
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f"{TMP_PREFIX}{step:06d}"
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_model(model, tmp, weights, keys)
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / f"rng-{rank}.pt")
        # Written last: a folder with trainer_state.json is complete even on filesystems without atomic rename.
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=2), encoding="utf-8")
        saving.seal(tmp)
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step (after a resume): move the old one aside first
            old = root / f".old-{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        _fsync_dir(root)
        for stale in complete_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def save_rng_other_rank(run_dir: Path, step: int, rank: int) -> None:
    """Non-main processes of a distributed run add their RNG state after the main one committed the folder
    (not in the file manifest: a resume under another world size has no use for it)."""
    torch.save(rng_state(), checkpoint_dir(run_dir) / f"{PREFIX}{step:06d}" / f"rng-{rank}.pt")


def clean_temporary(run_dir: Path) -> None:
    """Remove folders of saves that a kill interrupted."""
    root = checkpoint_dir(run_dir)
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith((TMP_PREFIX, ".old-")):
                shutil.rmtree(path, ignore_errors=True)


def load_model_weights(folder: Path, model) -> None:
    """The checkpoint's weights into the unwrapped model: before ``accelerator.prepare`` shards it."""
    saving.load_weights(model, folder, strict=False)


def load_training_state(folder: Path, model, optimizer, scheduler, rank: int = 0) -> dict:
    """Restore optimizer (into the prepared model's optimizer), scheduler and this rank's RNG; returns the
    trainer state. Every rank calls it."""
    restore_optimizer(model, optimizer, torch.load(folder / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
    rng_file = folder / f"rng-{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return json.loads((folder / STATE_FILE).read_text())
