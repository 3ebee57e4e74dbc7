"""Where a model comes from: ``hf-hub:`` / ``local-dir:`` sources, resolved to local folders in one place.

- ``hf-hub:org/name[@revision]``: a repository on the Hugging Face Hub (revision: a branch, tag or commit sha;
  default ``main``), downloaded through the huggingface_hub cache (``HF_HOME`` / ``HF_HUB_CACHE``; with
  ``HF_HUB_OFFLINE=1`` it is read from the cache only). Only the files a use needs are fetched: the card alone for
  ``show`` and ``diff``, the files ``slmzoo.json`` lists for a model.
- ``local-dir:PATH``: a folder on this machine.
- A bare string (:func:`parse_pretrained`, what ``slmzoo.from_pretrained`` takes): an existing path is a local
  folder; otherwise ``org/name[@revision]`` names a Hub repository. The CLI is stricter: a bare argument is a path or
  a card name, and the Hub needs the ``hf-hub:`` prefix.

A repository is data: nothing here imports or runs code from it, and weights are read from safetensors files only.
This module imports neither torch nor huggingface_hub at import time.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from slmzoo import saving

HUB_PREFIX = "hf-hub:"
LOCAL_PREFIX = "local-dir:"
# The files a backbone (a transformers model repository) is loaded from: config, safetensors weights, tokenizer.
# No pickled weights (*.bin, *.pt) and no code (*.py): loading a repository never runs anything from it.
BACKBONE_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
RELEASE_FILES = BACKBONE_FILES  # what a released checkpoint is read from
BACKBONE_CONFIG_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja"]  # meta builds: no weights
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class HubError(RuntimeError):
    """A Hub repository that cannot be read or written, said plainly (the CLI exits 2 without a traceback)."""


class NotAnSlmzooModelError(HubError):
    """A repository without ``card.yaml``: a checkpoint of another system, for an importer to read."""


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    revision: str | None = None  # None: the default branch

    def __str__(self) -> str:
        return HUB_PREFIX + self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_repo(text: str) -> HubSource:
    """``org/name[@revision]`` (an optional ``hf-hub:`` prefix allowed) -> :class:`HubSource`."""
    body = text[len(HUB_PREFIX):] if text.startswith(HUB_PREFIX) else text
    repo_id, _, revision = body.partition("@")
    if not _REPO_ID.match(repo_id) or "@" in revision:
        raise HubError(f"{text!r}: not a Hub repository (expected org/name or org/name@revision)")
    return HubSource(repo_id, revision or None)


def parse(text: str) -> HubSource | Path | None:
    """A prefixed source: ``hf-hub:...`` -> :class:`HubSource`, ``local-dir:PATH`` -> ``Path``; anything else None."""
    if text.startswith(HUB_PREFIX):
        return parse_repo(text)
    if text.startswith(LOCAL_PREFIX):
        return Path(text[len(LOCAL_PREFIX):]).expanduser()
    return None


def parse_pretrained(source: str | os.PathLike) -> HubSource | Path:
    """What ``from_pretrained`` takes: a prefixed source, an existing path, else ``org/name[@revision]`` on the Hub."""
    if isinstance(source, os.PathLike):
        return Path(source)
    parsed = parse(source)
    if parsed is not None:
        return parsed
    if Path(source).exists() or not _REPO_ID.match(source.partition("@")[0]):
        return Path(source)
    return parse_repo(source)


# -- huggingface_hub errors, said plainly ----------------------------------------------------------------
@contextlib.contextmanager
def hub_errors(source: HubSource | str, action: str = "read") -> Iterator[None]:
    """Turn huggingface_hub's exceptions into :class:`HubError` messages that say what to do."""
    from huggingface_hub import errors

    name = source.repo_id if isinstance(source, HubSource) else source
    revision = source.revision if isinstance(source, HubSource) else None
    try:
        yield
    except errors.RevisionNotFoundError:
        raise HubError(f"{name}: no revision {revision or 'main'!r} (a branch, tag or commit sha of the "
                       "repository)") from None
    except errors.RepositoryNotFoundError:
        raise HubError(f"{name}: no such repository, or a private one this token cannot {action} (log in with "
                       "`hf auth login` or set HF_TOKEN)") from None
    except errors.OfflineModeIsEnabled:
        raise HubError(f"{name}: not in the local cache, and HF_HUB_OFFLINE=1 forbids downloading it") from None
    except errors.LocalEntryNotFoundError as error:
        cause = error.__cause__ or error.__context__ or error  # why the Hub could not answer
        raise HubError(f"{name}: not in the local cache and the Hub cannot be reached ({_first_line(cause)}); "
                       "unset HF_HUB_OFFLINE or check HF_ENDPOINT") from None
    except errors.RemoteEntryNotFoundError:
        raise  # a missing file: the caller knows whether that matters (card_folder: not an slmzoo model)
    except errors.HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            raise HubError(f"{name}: the Hub refused the request without valid credentials: log in with "
                           "`hf auth login` or set HF_TOKEN") from None
        if status == 403:
            raise HubError(f"{name}: this token may not {action} it ({_server_message(error)})") from None
        raise HubError(f"{name}: the Hub answered {status}: {_server_message(error)}") from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _server_message(error) -> str:
    response = error.response
    message = response.headers.get("X-Error-Message") if response is not None else None
    return message or error.server_message or _first_line(error)


# -- downloads ---------------------------------------------------------------------------------------------
def _download(source: HubSource, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    with hub_errors(source):
        return Path(hf_hub_download(source.repo_id, filename, revision=source.revision))


def snapshot(source: HubSource | str, allow_patterns: list[str] | None = None) -> Path:
    """Download the files of a Hub repository that match ``allow_patterns`` (default: all) into the cache and
    return its local snapshot folder. An importer of another system's checkpoint calls this."""
    from huggingface_hub import snapshot_download

    source = parse_repo(source) if isinstance(source, str) else source
    with hub_errors(source):
        return Path(snapshot_download(source.repo_id, revision=source.revision, allow_patterns=allow_patterns))


def card_folder(source: HubSource) -> Path:
    """The cache folder holding the repository's ``card.yaml`` and ``slmzoo.json`` only (``show``, ``diff``)."""
    from huggingface_hub import errors

    try:
        card = _download(source, saving.CARD_FILE)
    except errors.RemoteEntryNotFoundError:
        raise NotAnSlmzooModelError(f"{source.repo_id} is not an slmzoo model (no {saving.CARD_FILE})") from None
    with contextlib.suppress(errors.RemoteEntryNotFoundError):
        _download(HubSource(source.repo_id, card.parent.name), saving.INFO_FILE)  # the same commit as the card
    return card.parent


def model_folder(source: HubSource) -> Path:
    """The cache folder of a saved model on the Hub: its card first, then exactly the files its ``slmzoo.json``
    lists, at the same commit. A repository without a card is another system's release (Qwen2-Audio, Voxtral, ...):
    its configs, tokenizer files and safetensors (never code or pickles), for :mod:`slmzoo.importing` to map."""
    try:
        folder = card_folder(source)
    except NotAnSlmzooModelError as error:
        from slmzoo.importing import ReleaseError, find_importer

        release = snapshot(source, allow_patterns=RELEASE_FILES)
        try:
            find_importer(release)
        except ReleaseError as why:  # neither: say both, naming the repository rather than the cache folder
            raise NotAnSlmzooModelError(f"{error}, and {str(why).replace(f'{release}: ', '')}") from None
        return release
    pinned = HubSource(source.repo_id, folder.name)  # the snapshot folder is named by the commit sha
    files = list(saving.read_info(folder).get("files") or [])
    patterns = [saving.CARD_FILE, saving.INFO_FILE, *files] if files else [
        saving.CARD_FILE, saving.INFO_FILE, "*.safetensors", saving.WEIGHTS_INDEX_FILE, f"{saving.TOKENIZER_DIR}/*"]
    return snapshot(pinned, allow_patterns=patterns)


def processor_folder(source: HubSource) -> Path:
    """The cache folder with what a processor needs: the card, ``slmzoo.json`` and ``tokenizer/`` (no weights)."""
    folder = card_folder(source)
    return snapshot(HubSource(source.repo_id, folder.name),
                    allow_patterns=[saving.CARD_FILE, saving.INFO_FILE, f"{saving.TOKENIZER_DIR}/*"])


def resolve(source: str | os.PathLike | HubSource, card_only: bool = False) -> Path:
    """The local folder a model source names (see the module doc for the rules). The one place a source becomes a
    folder: ``slmzoo.from_pretrained``, the CLI's model and card arguments, and backbones all come through here."""
    parsed = source if isinstance(source, HubSource) else parse_pretrained(source)
    if isinstance(parsed, Path):
        return parsed
    return card_folder(parsed) if card_only else model_folder(parsed)


# -- backbones ---------------------------------------------------------------------------------------------
def pretrained_entries(data: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """``(card key path, block)`` for every block of a card that names a ``pretrained`` source (nested ones too)."""
    if isinstance(data, dict):
        if isinstance(data.get("pretrained"), str) and path:
            yield path, data
        for key, value in data.items():
            if key != "presets":
                yield from pretrained_entries(value, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from pretrained_entries(value, f"{path}.{i}")


def backbone_folder(source: str, weights: bool = True) -> str:
    """A ``pretrained`` value as components read it: ``hf-hub:`` -> the cache folder (config and tokenizer only
    when ``weights`` is False), ``local-dir:`` -> the path; anything else unchanged (a folder, or a hub id that
    transformers fetches itself).

    An ``hf-hub:`` backbone comes whole (every safetensors shard): an encoder given a bare hub id downloads only
    the shards it reads (the LLM beside an audio LLM's tower stays on the Hub), given a folder it cannot."""
    parsed = parse(source)
    if parsed is None:
        return source
    if isinstance(parsed, Path):
        return str(parsed)
    return str(snapshot(parsed, allow_patterns=BACKBONE_FILES if weights else BACKBONE_CONFIG_FILES))


def named_backbone(source: str, weights: bool = True) -> Path:
    """A backbone another system's config names the way that system does (NeMo's ``pretrained_llm``, Ultravox's
    ``text_model_id``: a bare ``org/name[@revision]``, or a folder, ``local-dir:`` / ``hf-hub:``) as a local folder
    (:func:`parse_pretrained`'s rules); a Hub repository comes through the cache, its configs and tokenizer only
    unless ``weights``."""
    parsed = parse_pretrained(source)
    if isinstance(parsed, Path):
        return parsed
    return snapshot(parsed, allow_patterns=BACKBONE_FILES if weights else BACKBONE_CONFIG_FILES)


def localize(data: dict, weights: bool = True) -> dict | None:
    """A copy of card data whose ``hf-hub:`` / ``local-dir:`` sources are local folders; None if it has none."""
    import copy

    if not any(parse(block["pretrained"]) for _, block in pretrained_entries(data)):
        return None
    data = copy.deepcopy(data)
    for _, block in pretrained_entries(data):
        block["pretrained"] = backbone_folder(block["pretrained"], weights)
        if isinstance(block.get("tokenizer"), str) and parse(block["tokenizer"]):
            block["tokenizer"] = backbone_folder(block["tokenizer"], weights)
    return data


def pin(source: str) -> dict[str, str] | None:
    """``{"repo", "revision"}``: the commit sha a Hub source resolves to now; None for a local folder."""
    parsed = parse(source)
    if isinstance(parsed, Path) or parsed is None and (Path(source).exists() or not _REPO_ID.match(
            source.partition("@")[0])):
        return None
    hub = parsed if isinstance(parsed, HubSource) else parse_repo(source)
    from huggingface_hub import HfApi

    with hub_errors(hub):
        sha = HfApi().model_info(hub.repo_id, revision=hub.revision).sha
    return {"repo": hub.repo_id, "revision": sha}


def apply_pins(data: dict, backbones: dict[str, dict]) -> None:
    """Point each pinned ``pretrained`` source of card data at its recorded commit (``hf-hub:REPO@SHA``)."""
    for path, block in pretrained_entries(data):
        pinned = backbones.get(path)
        if pinned and pinned.get("revision") and block["pretrained"] == pinned.get("source"):
            block["pretrained"] = str(HubSource(pinned["repo"], pinned["revision"]))
