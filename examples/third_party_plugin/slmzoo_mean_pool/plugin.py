"""What slmzoo imports at start-up: the component's name, options and description, and a card folder.

This module must stay light: no torch import here. ``slmzoo list``, ``show``, ``diff`` and ``schema``
import it; the implementation (``slmzoo_mean_pool.adapter``) is imported only when a model is built.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from slmzoo import hookimpl
from slmzoo.registry import ComponentOptions, ComponentSpec


class MeanPoolOptions(ComponentOptions):
    """Average every ``window`` encoder frames, then project into the LLM width."""

    window: int = Field(4, ge=1, description="Encoder frames averaged into one embedding (divides the frame rate).")
    hidden_dim: int | None = Field(
        None, ge=1, description="Hidden width of a 2-layer GELU MLP; default (null): a single linear projection."
    )
    layernorm: bool = Field(True, description="LayerNorm on the pooled frames before the projection.")


@hookimpl
def slmzoo_register_components(register):
    register(ComponentSpec(
        kind="adapter",
        name="mean_pool",
        description="Mean pooling over windows of encoder frames + projection into the LLM width (example plugin).",
        options=MeanPoolOptions,
        factory="slmzoo_mean_pool.adapter:MeanPoolAdapter",
    ))


@hookimpl
def slmzoo_register_cards(register):
    register(Path(__file__).parent / "cards")
