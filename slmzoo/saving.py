"""The saved-model format, in one place: the folder layout, saving, loading and integrity.

A saved model (``save_pretrained``, ``slmzoo build --out``, every training checkpoint) is a folder::

    card.yaml                      the resolved card (self-contained after a full save: no pretrained sources)
    model.safetensors              the weights (tied tensors stored once); above a size limit instead
    model-00001-of-0000N.safetensors + model.safetensors.index.json
    tokenizer/                     tokenizer files, unless the card uses the built-in byte tokenizer
    slmzoo.json                    format, versions, trainable_only, preset, backbone sources (pinned to commit
                                   shas by a Hub push: ``backbones``), the plugin distributions and versions of the
                                   components the card names, and the size and sha256 of every other file in the
                                   folder (written last)

Loading is strict (a missing or unexpected tensor is an error naming it) and checks every file against
``slmzoo.json`` first, so a truncated or corrupted file is named instead of producing a broken model.

This module imports no torch at import time: the CLI's torch-free commands use :func:`is_saved_model` and
:func:`load_saved_card`; saving and loading weights import torch when called.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    import torch
    from torch import nn

CARD_FILE = "card.yaml"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
SHARD_PATTERN = "model-{index:05d}-of-{total:05d}.safetensors"
INFO_FILE = "slmzoo.json"
TOKENIZER_DIR = "tokenizer"
FORMAT = 2  # 1: no file manifest in slmzoo.json
MAX_SHARD_BYTES = 5 * 1024**3  # one weights file up to 5 GiB, as transformers shards


class CheckpointError(RuntimeError):
    """A saved model whose files cannot be used: missing, corrupted, or with tensors the model does not have."""


class CorruptFileError(CheckpointError):
    """A file of a saved folder differs from what ``slmzoo.json`` recorded (truncated, changed or missing)."""


# -- the layout ------------------------------------------------------------------------------------------
def has_weights(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return (folder / WEIGHTS_FILE).is_file() or (folder / WEIGHTS_INDEX_FILE).is_file()


def is_saved_model(path: str | os.PathLike) -> bool:
    """A folder with a card and weights: what ``from_pretrained`` loads."""
    path = Path(path)
    return path.is_dir() and (path / CARD_FILE).is_file() and has_weights(path)


def read_info(folder: str | os.PathLike) -> dict[str, Any]:
    file = Path(folder) / INFO_FILE
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CorruptFileError(f"{file}: unreadable ({error})") from None


def load_saved_card(folder: str | os.PathLike):
    """The validated card of a saved model (torch-free: ``show`` and ``diff`` use it). Each backbone source pinned
    in ``slmzoo.json`` (``backbones``, written by a Hub push) reads ``hf-hub:REPO@SHA``: the commit it was pushed
    against."""
    import yaml

    from slmzoo.card.loader import load_resolved
    from slmzoo.hub.sources import apply_pins

    folder = Path(folder)
    card_file = folder / CARD_FILE
    if not card_file.is_file():
        raise FileNotFoundError(f"{folder}: not a saved slmzoo model (no {CARD_FILE})")
    info = read_info(folder)
    check_plugins(folder, info)
    data = yaml.safe_load(card_file.read_text(encoding="utf-8"))
    apply_pins(data, info.get("backbones") or {})
    card = load_resolved(data, source=str(card_file))
    card.preset = info.get("preset")
    return card


# -- the plugins a saved card needs -------------------------------------------------------------------------
class MissingPluginError(CheckpointError):
    """A saved card names a component (or architecture) that no installed plugin registers."""


def component_plugins(card) -> list[dict[str, Any]]:
    """The architecture and every section's component of a resolved card, each with the plugin that registered it
    and that plugin's distribution and version (recorded in ``slmzoo.json``, so that loading elsewhere can say what
    to install)."""
    from slmzoo.plugins import host

    reg, plugins = host().registry, host().plugins
    named = [("architecture", card.architecture, reg.get_architecture(card.architecture))]
    for section in card.sections:
        block = card.data.get(section)
        if isinstance(block, dict) and isinstance(block.get("type"), str):
            kind = card.spec.section(section).kind
            named.append((kind, block["type"], reg.get(kind, block["type"])))
    out = []
    for kind, name, spec in named:
        provider = getattr(spec, "provider", None)
        plugin = plugins.get(provider)
        out.append({"kind": kind, "name": name, "plugin": provider,
                    "distribution": plugin.distribution if plugin else None,
                    "version": plugin.version if plugin else None})
    return out


def check_plugins(folder: str | os.PathLike, info: dict[str, Any] | None = None) -> None:
    """Raise :class:`MissingPluginError` naming the distribution and version to install when a component the saved
    card names (per ``slmzoo.json``) is not registered here."""
    from slmzoo.plugins import registry

    reg = registry()
    missing = []
    for entry in (read_info(folder) if info is None else info).get("plugins") or []:
        kind, name = entry.get("kind"), entry.get("name")
        found = reg.get_architecture(name) if kind == "architecture" else reg.get(kind, name)
        if found is None:
            missing.append(entry)
    if missing:
        needs = "; ".join(f"{e['kind']} {e['name']!r} from plugin {e.get('plugin')!r}" for e in missing)
        installs = sorted({f"{e['distribution']}=={e['version']}" if e.get("version") else e["distribution"]
                           for e in missing if e.get("distribution")})
        fix = f"install it: pip install {' '.join(repr(i) for i in installs)}" if installs else (
            "the distribution was not recorded: install the plugin that provides it")
        raise MissingPluginError(f"{folder}: the card needs {needs}, which no installed plugin registers; {fix}")


# -- integrity ---------------------------------------------------------------------------------------------
def sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != INFO_FILE)


def seal(folder: str | os.PathLike, info: dict[str, Any] | None = None) -> None:
    """Write ``slmzoo.json`` (``info``, default: what is there) with the size and sha256 of every other file.

    Call it after the last file of the folder is written."""
    folder = Path(folder)
    info = dict(read_info(folder) if info is None else info)
    info["files"] = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256(p)}
                     for p in _files(folder)}
    _write_atomic(folder / INFO_FILE, json.dumps(info, indent=2))


def is_weights_file(name: str) -> bool:
    return name == WEIGHTS_INDEX_FILE or name.endswith(".safetensors") and "/" not in name


def verify(folder: str | os.PathLike, weights: bool | None = None) -> None:
    """Check every file ``slmzoo.json`` records (``weights``: only the weight files, or only the others); raise
    :class:`CorruptFileError` naming the first bad one. Folders written before the manifest existed (format 1)
    pass unchecked."""
    folder = Path(folder)
    recorded = read_info(folder).get("files")
    if recorded is None:
        return
    for name, expected in recorded.items():
        if weights is not None and is_weights_file(name) != weights:
            continue
        path = folder / name
        if not path.is_file():
            raise CorruptFileError(f"{path}: missing (the saved folder is incomplete)")
        size = path.stat().st_size
        if size != expected["size"]:
            raise CorruptFileError(f"{path}: {size} bytes where {expected['size']} were saved (truncated or "
                                   "overwritten)")
        if sha256(path) != expected["sha256"]:
            raise CorruptFileError(f"{path}: contents differ from what was saved (sha256 mismatch: corrupted)")


def is_intact(folder: str | os.PathLike) -> bool:
    try:
        verify(folder)
    except CheckpointError:
        return False
    return True


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# -- weights -------------------------------------------------------------------------------------------
def save_weights(model: "nn.Module", folder: str | os.PathLike, keys: set[str] | None = None,
                 state_dict: dict[str, "torch.Tensor"] | None = None, max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    """Save ``model.state_dict()`` (or a ``state_dict`` gathered for it, as under FSDP), restricted to ``keys`` if
    given, into ``folder``: one ``model.safetensors``, or shards and an index above ``max_shard_bytes``. Tied
    tensors are stored once (the others recorded as aliases)."""
    from safetensors.torch import save_file

    folder = Path(folder)
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
    shards: list[dict[str, Any]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    metadata = {"slmzoo_aliases": json.dumps(aliases)}
    for stale in [folder / WEIGHTS_FILE, folder / WEIGHTS_INDEX_FILE, *folder.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        _save_file(save_file, shards[0], folder / WEIGHTS_FILE, metadata)
        return
    weight_map = {}
    for index, shard in enumerate(shards, start=1):
        name = SHARD_PATTERN.format(index=index, total=len(shards))
        _save_file(save_file, shard, folder / name, metadata)
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values()),
                          "slmzoo_aliases": aliases}, "weight_map": weight_map}
    _write_atomic(folder / WEIGHTS_INDEX_FILE, json.dumps(index, indent=2))


def _save_file(save_file, tensors, path: Path, metadata) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def read_weights(location: str | os.PathLike) -> dict[str, "torch.Tensor"]:
    """Every tensor of a saved folder (or one ``.safetensors`` file), aliases of tied tensors resolved."""
    from safetensors import safe_open

    location = Path(location)
    if location.is_dir():
        if (location / WEIGHTS_INDEX_FILE).is_file():
            index = json.loads((location / WEIGHTS_INDEX_FILE).read_text(encoding="utf-8"))
            files = [location / name for name in dict.fromkeys(index["weight_map"].values())]
        else:
            files = [location / WEIGHTS_FILE]
    else:
        files = [location]
    tensors, aliases = {}, {}
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"{file}: no such weights file")
        try:
            with safe_open(str(file), framework="pt") as f:
                aliases.update(json.loads((f.metadata() or {}).get("slmzoo_aliases", "{}")))
                tensors.update({k: f.get_tensor(k) for k in f.keys()})
        except CheckpointError:
            raise
        except Exception as error:  # safetensors raises its own types for a damaged header or data
            raise CorruptFileError(f"{file}: not a readable safetensors file ({error})") from None
    for alias, source in aliases.items():
        tensors[alias] = tensors[source]
    return tensors


def load_state(module: "nn.Module", tensors: dict[str, "torch.Tensor"], strict: bool = True,
               where: str = "checkpoint") -> list[str]:
    """Load ``tensors`` into ``module``: unexpected names and shape mismatches are always errors, missing ones
    when ``strict``; each error names the tensors (``where`` says whose). Returns the missing names."""
    expected = module.state_dict()
    unexpected = sorted(set(tensors) - set(expected))
    missing = sorted(set(expected) - set(tensors))
    if unexpected:
        raise CheckpointError(f"{where}: unexpected tensors not in the model: {_names(unexpected)}")
    if strict and missing:
        raise CheckpointError(f"{where}: missing tensors: {_names(missing)}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{where}: {name} has shape {tuple(tensor.shape)}, the model expects "
                                  f"{tuple(expected[name].shape)}")
    module.load_state_dict(tensors, strict=False)
    return missing


def _names(names: list[str]) -> str:
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")


def load_weights(module: "nn.Module", location: str | os.PathLike, strict: bool = True) -> list[str]:
    """:func:`read_weights` then :func:`load_state`. Returns the missing names (allowed when not ``strict``)."""
    return load_state(module, read_weights(location), strict=strict, where=str(location))


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("slmzoo", "torch", "transformers", "peft"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


# -- whole models ------------------------------------------------------------------------------------------
def weight_keys(model) -> set[str] | None:
    """What a training checkpoint keeps: trainable tensors, plus every tensor of a component with no
    ``pretrained:`` source (random init, as in tiny presets: it could not be rebuilt). ``None``: everything."""
    data = model.card.data
    random_init = {s for s in model.sections if isinstance(data.get(s), dict) and not data[s].get("pretrained")}
    state = model.state_dict()
    keys = {n for n, p in model.named_parameters() if p.requires_grad}
    keys |= {n for n in state if n.split(".", 1)[0] in random_init}
    return None if keys >= set(state) else keys


def sources(block: Any) -> list[str]:
    """The ``pretrained`` sources a card block names, its own and those of blocks nested in it (``multi``)."""
    if isinstance(block, dict):
        own = [block["pretrained"]] if block.get("pretrained") else []
        return own + [source for value in block.values() for source in sources(value)]
    if isinstance(block, list):
        return [source for value in block for source in sources(value)]
    return []


def standalone_card(model) -> tuple[dict, dict[str, str | list[str]]]:
    """The resolved card of a full save, and the ``pretrained`` sources it no longer needs.

    A full save has every weight, so it must rebuild without the original folder, file or hub: each component
    that names a source and can stand alone (:meth:`slmzoo.components.Component.standalone_options`) gets its
    inline config and source-derived settings written into the card, and its ``pretrained`` cleared."""
    data = json.loads(json.dumps(model.card.data))
    found = {}
    for section in model.sections:
        block, component = data.get(section), getattr(model, section, None)
        if not isinstance(block, dict) or not sources(block) or component is None:
            continue
        standalone = component.standalone_options() if hasattr(component, "standalone_options") else None
        if standalone is None:
            continue
        found[section] = block["pretrained"] if block.get("pretrained") else sources(block)
        block.update(json.loads(json.dumps(standalone)))  # plain YAML types (tuples become lists)
        if block.get("pretrained"):
            block["pretrained"] = None
    return data, found


def save_pretrained(model, directory: str | os.PathLike, trainable_only: bool = False,
                    keys: set[str] | None = None, state_dict: dict | None = None, standalone: bool | None = None,
                    sealed: bool = True, max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Write a saved-model folder (see the module doc) and return it.

    ``trainable_only``: only trained weights (the card keeps naming the backbones' sources). ``keys``: exactly
    these tensors (training checkpoints: :func:`weight_keys`); ``state_dict``: weights gathered from a sharded
    run. ``standalone`` (default: a full save) writes the self-contained card. ``sealed=False`` leaves
    ``slmzoo.json`` without the file manifest, for a caller that adds files and then calls :func:`seal`."""
    from slmzoo.card.loader import dump_yaml

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if trainable_only and keys is None:
        keys = {n for n, p in model.named_parameters() if p.requires_grad}
    partial = keys is not None
    save_weights(model, directory, keys=keys, state_dict=state_dict, max_shard_bytes=max_shard_bytes)
    card, found = standalone_card(model) if (not partial if standalone is None else standalone) else (
        json.loads(json.dumps(model.card.data)), {})
    (directory / CARD_FILE).write_text(dump_yaml(card), encoding="utf-8")
    info: dict[str, Any] = {"format": FORMAT, "trainable_only": partial, "preset": model.card.preset,
                            "architecture": model.card.architecture, "versions": versions(),
                            "plugins": component_plugins(model.card)}
    if found:
        info["sources"] = found  # where the backbones came from; the save no longer needs them
    if model.processor is not None:
        model.processor.save_pretrained(directory / TOKENIZER_DIR)
    if sealed:
        seal(directory, info)
    else:
        _write_atomic(directory / INFO_FILE, json.dumps(info, indent=2))
    return directory


def load_pretrained(directory: str | os.PathLike, device: "str | torch.device | None" = None,
                    check: bool = True):
    """Load what :func:`save_pretrained` wrote: every file checked against ``slmzoo.json`` (``check``), the model
    built from the saved card without downloading backbones unless only trained weights were saved, the weights
    loaded strictly. In eval mode. A folder that is not a saved model but a release an importer recognises
    (:mod:`slmzoo.importing`) is imported on the fly."""
    from slmzoo.builder import build
    from slmzoo.processing import card_processor

    directory = Path(directory)
    if directory.is_dir() and not is_saved_model(directory):  # a release (config.json): imported on the fly
        from slmzoo.importing import import_checkpoint

        return import_checkpoint(directory, device=device)
    if check:
        verify(directory, weights=False)  # the card and tokenizer, before anything is built from them
    card = load_saved_card(directory)
    if not has_weights(directory):
        raise CheckpointError(f"{directory}: no {WEIGHTS_FILE} (or {WEIGHTS_INDEX_FILE})")
    trainable_only = bool(read_info(directory).get("trainable_only"))
    processor = card_processor(card, tokenizer_dir=directory / TOKENIZER_DIR)
    model = build(card, load_weights=trainable_only, processor=processor)
    try:
        tensors = read_weights(directory)
    except CheckpointError:
        if check:
            verify(directory, weights=True)  # says which file is truncated or changed, when the manifest knows
        raise
    # Tensor names first (a wrong or missing tensor is named), then every byte against what was saved.
    load_state(model, tensors, strict=not trainable_only, where=str(directory))
    if check:
        verify(directory, weights=True)
    if device is not None:
        model.to(device)
    return model.eval()


def saved_files(directory: str | os.PathLike) -> Iterable[Path]:
    """Every file of a saved folder, ``slmzoo.json`` included (what an upload or a copy takes)."""
    directory = Path(directory)
    return [*_files(directory), directory / INFO_FILE]
