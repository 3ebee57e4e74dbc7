"""Weights on disk: safetensors with tied tensors stored once; strict loading that names what is wrong."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch
from torch import nn


class CheckpointError(RuntimeError):
    pass


def save_weights(model: nn.Module, path: Path, keys: set[str] | None = None,
                 state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Save ``model.state_dict()`` (or a ``state_dict`` gathered for it, as under FSDP), restricted to ``keys``
    if given; tied tensors are stored once."""
    from safetensors.torch import save_file

    tensors, aliases, seen = {}, {}, {}
    for name, tensor in (model.state_dict() if state_dict is None else state_dict).items():
        if keys is not None and name not in keys:
            continue
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if ident in seen:
            aliases[name] = seen[ident]
            continue
        seen[ident] = name
        tensors[name] = tensor.detach().contiguous().cpu()
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"slmzoo_aliases": json.dumps(aliases)})
    tmp.replace(path)


def load_weights(model: nn.Module, path: Path, strict: bool = True) -> list[str]:
    """Load into ``model``; unexpected keys are always an error, missing ones when ``strict``. Returns missing."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such weights file")
    with safe_open(str(path), framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get("slmzoo_aliases", "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for alias, source in aliases.items():
        tensors[alias] = tensors[source]
    expected = model.state_dict()
    unexpected = sorted(set(tensors) - set(expected))
    missing = sorted(set(expected) - set(tensors))
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensors not in the model: {', '.join(unexpected[:10])}"
                              + (f" and {len(unexpected) - 10} more" if len(unexpected) > 10 else ""))
    if strict and missing:
        raise CheckpointError(f"{path}: missing tensors: {', '.join(missing[:10])}"
                              + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{path}: {name} has shape {tuple(tensor.shape)}, the model expects "
                                  f"{tuple(expected[name].shape)}")
    model.load_state_dict(tensors, strict=False)
    return missing


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("slmzoo", "transformers", "peft"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out
