"""Released checkpoints -> slmzoo models: recognise a release folder, map it onto its zoo card, load it strictly.

A release (a folder as the Hugging Face Hub holds it: ``config.json``, sharded safetensors and their index, the
tokenizer and feature-extractor files) is recognised from its own ``config.json`` by a registered importer
(:class:`slmzoo.registry.ImporterSpec`, hook ``slmzoo_register_importers``; one per family, in
``plugins/importers/``). The importer writes the zoo card with the release's own dimensions, the model is built
from it without any download, the release's tokenizer (and chat template, special tokens) becomes the processor's,
and the release's tensors are renamed onto the model and loaded strictly: a tensor no rule maps, one the model does
not have, one it lacks, or a shape that differs is an error naming it.

:func:`find_importer` is the one place a local folder is matched to an importer (``from_pretrained``, ``generate``
and ``slmzoo import`` all go through it); a hub source is resolved to a local folder first.
This module imports no torch at import time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmzoo.registry import ImporterSpec
from slmzoo.saving import CheckpointError

if TYPE_CHECKING:
    import torch

CONFIG_FILE = "config.json"


class ReleaseError(CheckpointError):
    """A folder no importer recognises, or a release whose files do not fit the card it maps onto."""


# -- recognising a release (torch-free) -------------------------------------------------------------------
def read_config(folder: str | os.PathLike) -> dict[str, Any] | None:
    """A release's ``config.json`` as a dict; ``None`` when the folder has none."""
    file = Path(folder) / CONFIG_FILE
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ReleaseError(f"{file}: unreadable ({error})") from None


def importers() -> list[ImporterSpec]:
    from slmzoo.plugins import registry

    return sorted(registry().importers.values(), key=lambda spec: spec.name)


def find_importer(folder: str | os.PathLike, card: str | None = None) -> ImporterSpec:
    """The importer of a local release folder (``card``: only importers onto that zoo card); raises
    :class:`ReleaseError` saying what the folder's ``config.json`` names and what the importers know."""
    folder = Path(folder)
    config = read_config(folder)
    if config is None:
        raise ReleaseError(f"{folder}: neither a saved slmzoo model (no card.yaml) nor a release (no {CONFIG_FILE})")
    candidates = importers()
    if card is not None:
        candidates = [spec for spec in candidates if spec.card == card]
        if not candidates:
            cards = sorted({spec.card for spec in importers()})
            raise ReleaseError(f"--card {card}: no importer maps releases onto it; importers know the cards "
                               f"{', '.join(cards) or '(none registered)'}")
    for spec in candidates:
        if spec.recognises(config):
            return spec
    known = "; ".join(f"{spec.name} (card {spec.card}): {_recognised(spec)}" for spec in candidates)
    raise ReleaseError(f"{folder}: no importer recognises this release: its {CONFIG_FILE} names architectures "
                       f"{config.get('architectures')} and model_type {config.get('model_type')!r}. Importers: "
                       f"{known or 'none registered'}")


def is_release(folder: str | os.PathLike) -> bool:
    try:
        find_importer(folder)
    except ReleaseError:
        return False
    return True


# -- importing ------------------------------------------------------------------------------------------
def import_checkpoint(source: str | os.PathLike, card: str | None = None,
                      device: "str | torch.device | None" = None):
    """The slmzoo model of a release folder (``card``: the zoo card to map it onto; default: the importer's),
    in eval mode. Nothing is downloaded."""
    folder = Path(source)
    if not folder.is_dir():
        raise ReleaseError(f"{source}: no such folder")
    spec = find_importer(folder, card)
    importer = spec.load_factory()(spec, folder)
    model = importer.build()
    if device is not None:
        model.to(device)
    return model.eval()


def import_to(source: str | os.PathLike, out: str | os.PathLike, card: str | None = None) -> Path:
    """``slmzoo import``: the release as a standalone slmzoo model folder (:func:`slmzoo.saving.save_pretrained`)."""
    from slmzoo.saving import save_pretrained

    return save_pretrained(import_checkpoint(source, card), out)


# -- exporting -------------------------------------------------------------------------------------------------
EXPORT_FORMATS = ("transformers",)


def export_model(model, to: str, out: str | os.PathLike) -> Path:
    """``slmzoo export``: ``model`` in the reference's own checkpoint layout (``to``: ``transformers``), written by
    the importer of its card's family (the card's name is the importer's card). A LoRA'd LLM is merged (or, for a
    release that ships its LoRA apart, unloaded) in ``model`` itself: export a copy to keep using the adapters."""
    if to not in EXPORT_FORMATS:
        raise ReleaseError(f"--to {to}: unknown format; known: {', '.join(EXPORT_FORMATS)}")
    families = [spec.load_factory() for spec in importers() if spec.card == model.card.name]
    family = next((f for f in families if _exports(f)), None)
    if family is None:
        exportable = sorted(spec.card for spec in importers() if _exports(spec.load_factory()))
        raise ReleaseError(f"{model.card.name}: no importer exports this card to {to}; exportable cards: "
                           f"{', '.join(exportable) or 'none'}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    family.export(model, out)
    return out


class Importer:
    """How one family's releases become models of its zoo card. A family sets ``rules`` (release tensor-name
    prefixes -> the model's) and ``card_blocks`` (the card keys the release decides: dimensions, tokenizer, prompt);
    ``normalise`` maps other layouts of the same release onto the one ``rules`` name (transformers' legacy names).

    ``spec``: the registered :class:`ImporterSpec`; ``folder``: the release."""

    #: ``(release prefix, model prefix)``, the first match wins.
    rules: tuple[tuple[str, str], ...] = ()
    #: Sections whose weights come from their card block's own ``pretrained`` source, not from the release
    #: (Ultravox's LLM, named by ``text_model_id``).
    from_sources: tuple[str, ...] = ()

    def __init__(self, spec: ImporterSpec, folder: Path):
        self.spec, self.folder = spec, Path(folder)
        self.config = read_config(folder) or {}

    # -- what a family writes ----------------------------------------------------------------------------
    def card_blocks(self) -> dict[str, dict[str, Any]]:
        """Card keys the release decides, per section (``{"encoder": {"config": {...}}, "prompt": {...}}``): each
        block's keys replace the zoo card's; a block naming another ``type`` replaces the whole block."""
        return {}

    def normalise(self, name: str) -> str:
        """A release tensor name in the layout ``rules`` are written for (default: as it is)."""
        return name

    def skips(self, release_name: str) -> bool:
        """Release tensors the model recomputes and never loads (default: none)."""
        return False

    def convert(self, model_name: str, tensor: "torch.Tensor") -> "torch.Tensor":
        """A release tensor in the model's shape (default: as it is)."""
        return tensor

    def check(self, model) -> None:
        """Checks of the release against the built model beyond its weights (token ids, feature settings)."""

    @classmethod
    def export(cls, model, out: Path) -> None:
        """Write ``model`` (a card of this family) in the release's own layout into ``out``; a family that can
        overrides this (:func:`export_model` lists those)."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------------------------
    def fail(self, message: str) -> ReleaseError:
        return ReleaseError(f"{self.folder} ({self.spec.name} importer, card {self.spec.card}): {message}")

    def card(self):
        """The zoo card with the release's blocks, validated."""
        from slmzoo.card.loader import load_card, load_resolved

        data = json.loads(json.dumps(load_card(self.spec.card).data))
        data.pop("presets", None)  # the release decides the sizes: the card's presets no longer apply
        for section, block in self.card_blocks().items():
            if "type" in block and block["type"] != (data.get(section) or {}).get("type"):
                data[section] = dict(block)  # another component: the old one's options do not apply
            else:
                data.setdefault(section, {}).update(block)
        return load_resolved(data, source=f"{self.spec.card} imported from {self.folder}")

    def build(self):
        """The model of the card, the release's tokenizer in its processor, the release's weights loaded."""
        from slmzoo.builder import build
        from slmzoo.processing import Processor

        card = self.card()
        processor = Processor.from_card(card, tokenizer_dir=self.tokenizer_dir())
        model = build(card, load_weights=bool(self.sources()), processor=processor)
        self.check(model)
        self.load_weights(model)
        return model

    def sources(self) -> tuple[str, ...]:
        """The sections :attr:`from_sources` names (a family may decide per release)."""
        return self.from_sources

    def tokenizer_dir(self) -> Path:
        """Where the release keeps its tokenizer files (default: beside config.json)."""
        return self.folder

    def release_tensors(self) -> dict[str, "torch.Tensor"]:
        """Every tensor of the release's safetensors (one file, or the shards its index names)."""
        from slmzoo.saving import read_weights

        return read_weights(self.folder)

    def model_name(self, release_name: str) -> str | None:
        """The model's name of a release tensor (``None``: no rule maps it)."""
        name = self.normalise(release_name)
        for theirs, ours in self.rules:
            if name.startswith(theirs):
                return ours + name[len(theirs):]
        return None

    @classmethod
    def release_name(cls, model_name: str) -> str | None:
        """The inverse of :meth:`model_name`, in the layout ``rules`` are written for (the yardsticks copy our
        weights into the reference by it)."""
        for theirs, ours in cls.rules:
            if model_name.startswith(ours):
                return theirs + model_name[len(ours):]
        return None

    def load_weights(self, model) -> None:
        """Every model tensor from the release, strictly; errors name the release's tensors."""
        tensors, problems = {}, []
        unmapped = []
        for name, tensor in self.release_tensors().items():
            if self.skips(name):
                continue
            ours = self.model_name(name)
            if ours is None:
                unmapped.append(name)
            else:
                tensors[ours] = (name, self.convert(ours, tensor))
        expected = model.state_dict()
        if unmapped:
            problems.append(f"tensors no rule of the importer maps: {_names(unmapped)}")
        unexpected = sorted(theirs for ours, (theirs, _) in tensors.items() if ours not in expected)
        if unexpected:
            problems.append(f"tensors the card's model does not have: {_names(unexpected)}")
        sourced = tuple(section + "." for section in self.sources())
        missing = [n for n in sorted(set(expected) - set(tensors))
                   if not n.startswith(sourced) and not _tied_to_given(n, expected, tensors)]
        if missing:
            problems.append("tensors the model needs that the release lacks: "
                            + _names([f"{self.release_name(n) or '?'} (for {n})" for n in missing]))
        problems += [f"{theirs} has shape {tuple(t.shape)}, the card's model expects {tuple(expected[ours].shape)}"
                     for ours, (theirs, t) in sorted(tensors.items()) if ours in expected
                     and t.shape != expected[ours].shape]
        if problems:
            raise self.fail("the weights do not fit: " + "; ".join(problems))
        model.load_state_dict({ours: t for ours, (_, t) in tensors.items()}, strict=False)


def _exports(family: type) -> bool:
    """Whether an importer class writes its family's layout (overrides :meth:`Importer.export`)."""
    return family.export.__func__ is not Importer.export.__func__


def _recognised(spec: ImporterSpec) -> str:
    return ", ".join(spec.architectures + spec.model_types) or "config keys " + ", ".join(spec.config_keys)


def _tied_to_given(name: str, expected: dict, given: dict) -> bool:
    """Whether ``name`` shares its storage with a tensor the release gives (a tied output head)."""
    tensor = expected[name]
    return any(other in given and expected[other].data_ptr() == tensor.data_ptr() for other in expected
               if other != name)


def _names(names: list[str]) -> str:
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
