"""``Architecture``: the base class of every model slmzoo builds from a card.

A registered :class:`slmzoo.registry.ArchitectureSpec` names its sections and its model class, a subclass of
:class:`Architecture`. The base class does what every architecture shares: it holds one component per section
(as a submodule of the section's name), applies the card's freeze policy, summarises the components, saves and
loads (through :mod:`slmzoo.saving`), and gives the training loop what it needs (a dataset, a loss, validation
metrics). A subclass writes ``forward`` (a batch -> :class:`ModelOutput`) and whatever inference it offers.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slmzoo.processing import UsesProcessor

if TYPE_CHECKING:
    from slmzoo.builder import BuildContext


class TrainPolicyError(ValueError):
    pass


@dataclass
class ModelOutput:
    """``loss``: what training minimises (scalar), averaged over ``num_tokens`` targets; ``losses``: its named
    parts, logged separately (e.g. ``text`` and ``audio`` of a speech-to-speech model)."""

    loss: torch.Tensor | None
    num_tokens: int = 0
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


class Architecture(UsesProcessor, nn.Module):
    """One component per section of the card's architecture (``None`` for an optional section left out)."""

    def __init__(self, card, processor=None, **components: nn.Module | None):
        """``card``: the resolved card (``None`` for a model assembled by hand: its sections are the components
        given)."""
        super().__init__()
        sections = tuple(card.sections) if card is not None else tuple(components)
        unknown = set(components) - set(sections)
        if unknown:
            raise TypeError(f"{type(self).__name__}: no section {sorted(unknown)} in architecture "
                            f"{card.architecture!r} (sections: {', '.join(sections)})")
        self.card = card
        self.processor = processor
        self._sections = sections
        for section in sections:
            setattr(self, section, components.get(section))

    # -- building ------------------------------------------------------------------------------------
    @classmethod
    def build_components(cls, context: "BuildContext") -> dict[str, nn.Module | None]:
        """Build every section in the architecture's build order; each component may read what the ones before
        it published to the context (``Component.context_fields``)."""
        return {section: context.build_section(section) for section in context.card.spec.order}

    # -- conveniences ----------------------------------------------------------------------------------
    @property
    def sections(self) -> tuple[str, ...]:
        return self._sections

    def components(self) -> dict[str, nn.Module]:
        """Section -> component, the optional sections a card left out skipped."""
        return {s: getattr(self, s) for s in self.sections if getattr(self, s) is not None}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- the model ---------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def audio_tokens_per_second(self) -> float | None:
        """Audio embeddings reaching the language model per second of audio (``None``: not a fixed rate)."""
        return None

    def section_dims(self, section: str) -> tuple[int | None, float | None]:
        """``(output width, frames per second)`` of a section's output, for the build summary."""
        return getattr(getattr(self, section), "output_dim", None), None

    # -- training --------------------------------------------------------------------------------------
    def training_dataset(self, train, augment: bool = True, strict: bool = False):
        """The map-style Lhotse dataset turning cuts into this model's batches (``augment``: the card's
        ``train.augment``, else none). Default: speech + prompt -> response batches (:class:`SpeechDataset`)."""
        from slmzoo.data import SpeechDataset

        return SpeechDataset(self.processor, self.sampling_rate, train.max_text_tokens,
                             train.augment if augment else None, train.seed, strict)

    def evaluate_cuts(self, cuts: list, batch_size: int = 16, normalize: str = "english", max_new_tokens: int = 128,
                      issues=None, asr=None) -> tuple[list[dict], dict, float]:
        """Decode evaluation ``cuts`` and score them (what ``slmzoo eval`` reports): ``(records, metrics, audio
        seconds decoded)``. Default: text out, WER and CER (BLEU for translation tasks). ``asr``: a model transcribing
        generated speech, for architectures that speak."""
        from slmzoo.evaluation import score, transcribe

        if asr is not None:
            from slmzoo.errors import CapabilityError

            raise CapabilityError(f"--asr scores generated speech; a {self.card.architecture} model generates text")
        records, seconds = transcribe(self, cuts, batch_size, max_new_tokens, issues)
        return records, score(records, normalize), seconds

    def decode_metrics(self, cuts: list, batch_size: int = 32) -> dict[str, float]:
        """Metrics of the model's own outputs on validation cuts (WER for text models); default: none."""
        return {}

    def enable_gradient_checkpointing(self) -> list[str]:
        """Turn on activation checkpointing in every component that supports it; returns their sections."""
        return [s for s, c in self.components().items() if c.gradient_checkpointing_enable()]

    def apply_train_policy(self) -> None:
        """Freeze what ``train.freeze`` names, then unfreeze ``train.trainable`` globs.

        Entries are section names (``encoder``, ``llm``, ...) or globs over parameter names. Freezing a component
        keeps its LoRA weights trainable (NeMo SALM: frozen LLM + LoRA); a glob that matches nothing is an error,
        not a warning.
        """
        train = self.card.train
        params = dict(self.named_parameters())
        for entry in train.freeze:
            for name in self._match(entry, params, "train.freeze"):
                if entry in self.sections and "lora_" in name:
                    continue
                params[name].requires_grad_(False)
        for entry in train.trainable:
            for name in self._match(entry, params, "train.trainable"):
                params[name].requires_grad_(True)

    def _match(self, entry: str, params: dict[str, nn.Parameter], key: str) -> list[str]:
        if entry in self.sections:
            names = [n for n in params if n.startswith(entry + ".")]
        else:
            names = [n for n in params if fnmatch.fnmatchcase(n, entry)]
        if not names:
            sample = ", ".join(list(params)[:3])
            raise TrainPolicyError(f"{key}: {entry!r} matches no parameter (use a component name "
                                   f"{', '.join(self.sections)} or a glob over names like {sample})")
        return names

    # -- sizes -------------------------------------------------------------------------------------------
    def summary(self) -> list[dict[str, Any]]:
        """One row per present section: type, parameters, trainable parameters, output width and frame rate."""
        rows = []
        for section, module in self.components().items():
            params = list(module.parameters())
            dim, fps = self.section_dims(section)
            rows.append({"component": section, "type": self.card.data[section]["type"],
                         "params": sum(p.numel() for p in params),
                         "trainable": sum(p.numel() for p in params if p.requires_grad),
                         "output_dim": dim, "frames_per_second": fps})
        return rows

    def num_parameters(self, trainable_only: bool = False) -> int:
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) in seen or (trainable_only and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    # -- saving and loading --------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, trainable_only: bool = False) -> Path:
        """A saved-model folder (:mod:`slmzoo.saving`): weights, resolved card, tokenizer, ``slmzoo.json``.
        A full save stands alone (no backbone source needed); ``trainable_only`` keeps the trained weights only."""
        from slmzoo.saving import save_pretrained

        return save_pretrained(self, directory, trainable_only=trainable_only)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, device: str | torch.device | None = None):
        """Load a saved model (a folder, ``local-dir:PATH`` or ``hf-hub:org/name[@rev]``); strict: a missing,
        unexpected or corrupted tensor is an error naming it."""
        from slmzoo.hub.sources import resolve
        from slmzoo.saving import load_pretrained

        return load_pretrained(resolve(source), device=device)

    def push_to_hub(self, repo_id: str, **options):
        """Push to the Hugging Face Hub as ``org/name`` (:func:`slmzoo.hub.push.push_to_hub`: ``revision``,
        ``private``, ``create_pr``, ``commit_message``, ``trainable_only``, ``dry_run``, ``overwrite_readme``, ...)."""
        from slmzoo.hub.push import push_to_hub

        return push_to_hub(self, repo_id, **options)
