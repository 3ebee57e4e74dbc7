"""Encoder specs: names, descriptions and options. Imports no torch; implementations load on build."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from slmzoo import hookimpl
from slmzoo.registry import ComponentOptions, ComponentSpec


class EncoderOptions(ComponentOptions):
    """Options every encoder shares: which encoder states reach the adapter (survey, section 4)."""

    layer: Literal["last", "weighted", "all"] | int = Field(
        "last",
        description="'last' layer; an int picks a layer (0 = embeddings, L = last; negative counts from the end); "
        "'weighted' is a learned softmax-weighted sum of all layers; 'all' stacks them as [B, L, T, C].",
    )


class WhisperOptions(EncoderOptions):
    """The encoder of OpenAI Whisper, computing its own log-mel features."""

    pretrained: str | None = Field(None, description="Hub id or local folder of a Whisper checkpoint (transformers format).")
    config: dict[str, Any] | None = Field(
        None, description="Inline WhisperConfig fields for a randomly initialised encoder (used with --meta too)."
    )
    pad_to_window: bool = Field(
        False, description="Pad every clip to the 30 s window exactly as the original; default is variable length."
    )


@hookimpl
def slmzoo_register_components(register):
    register(ComponentSpec(
        kind="encoder", name="whisper",
        description="Whisper encoder (log-mel + conv + transformer), variable length by default, 50 frames/s.",
        options=WhisperOptions, factory="slmzoo_plugins.encoders.whisper:WhisperEncoder",
    ))
