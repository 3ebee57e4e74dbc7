"""slmzoo: a plugin-based model zoo for speech-augmented LLMs.

The public API mirrors the CLI. Importing ``slmzoo`` does not import torch; ``build`` and
``from_pretrained`` do.
"""

from __future__ import annotations

from slmzoo.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "load_card", "load_processor", "build", "from_pretrained", "__version__"]


def load_card(source, preset=None, overrides=None):
    """Load, resolve (``extends``, preset, ``--set`` overrides) and validate a card: a path or a card name."""
    from slmzoo.card.loader import load_card as _load_card

    return _load_card(source, preset=preset, overrides=overrides)


def load_processor(source, preset=None, overrides=None):
    """The processor (tokenizer, chat template, audio tag, prompt formatting, audio settings) of a card or a saved
    model folder, without building the model."""
    from slmzoo.processing import load_processor as _load_processor

    return _load_processor(source, preset=preset, overrides=overrides)


def build(card, meta: bool = False):
    """Instantiate the model of a loaded card (or anything ``load_card`` takes): a
    :class:`slmzoo.model.SpeechLM` for the default architecture, the card's architecture's model otherwise."""
    from slmzoo.builder import build as _build

    return _build(card, meta=meta)


def from_pretrained(source, **kwargs):
    """Load a model saved with ``save_pretrained`` (or ``slmzoo build --out``, a training checkpoint, a Hub push):
    a folder, ``local-dir:PATH``, or ``hf-hub:org/name[@revision]``. A bare string is a folder if it exists, else
    ``org/name[@revision]`` on the Hub (:mod:`slmzoo.hub.sources`)."""
    from slmzoo.hub.sources import resolve
    from slmzoo.saving import load_pretrained

    return load_pretrained(resolve(source), **kwargs)
