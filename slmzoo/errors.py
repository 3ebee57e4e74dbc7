"""Error types every plugin shares, so that callers (the CLI, a server) can tell them apart."""

from __future__ import annotations


class PretrainedLoadError(RuntimeError):
    """A ``pretrained`` source (hub id, folder, file) or tokenizer that cannot be read, or whose weights do not fit
    the component exactly (missing, unexpected or mis-shaped tensors, named in the message)."""


class CapabilityError(ValueError):
    """A model asked for what its architecture does not do (a prompt for a duplex model, speech out of a text
    model): the message says what it does instead."""


class SequenceTooLongError(ValueError):
    """An LLM input (prompt, audio embeddings and answer) longer than the model's table of learned positions
    allows: the message gives both lengths and the setting that bounds them."""
