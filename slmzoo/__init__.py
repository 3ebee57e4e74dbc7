"""slmzoo: a plugin-based model zoo for speech-augmented LLMs.

The public API mirrors the CLI. Importing ``slmzoo`` does not import torch; ``build`` and
``from_pretrained`` do.
"""

from __future__ import annotations

from slmzoo.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "load_card", "build", "from_pretrained", "__version__"]


def load_card(source, preset=None, overrides=None):
    """Load, resolve (``extends``, preset, ``--set`` overrides) and validate a card: a path or a card name."""
    from slmzoo.card.loader import load_card as _load_card

    return _load_card(source, preset=preset, overrides=overrides)


def build(card, meta: bool = False):
    """Instantiate a :class:`slmzoo.model.SpeechLM` from a loaded card (or anything ``load_card`` takes)."""
    from slmzoo.builder import build as _build

    return _build(card, meta=meta)


def from_pretrained(path, **kwargs):
    """Load a model saved with ``SpeechLM.save_pretrained`` (or ``slmzoo build --out``)."""
    from slmzoo.model import SpeechLM

    return SpeechLM.from_pretrained(path, **kwargs)
