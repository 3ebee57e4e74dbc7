"""Adapter specs. Imports no torch; implementations load on build."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slmzoo import hookimpl
from slmzoo.registry import ComponentOptions, ComponentSpec


class StackOptions(ComponentOptions):
    """Stack k consecutive frames, then an MLP into the LLM width (Ultravox, SLAM-ASR)."""

    k: int = Field(8, ge=1, description="Frames stacked into one embedding (divides the frame rate by k).")
    hidden_dim: int | None = Field(None, ge=1, description="MLP hidden width; default: the LLM width.")
    activation: Literal["gelu", "relu", "silu", "swiglu"] = Field("gelu", description="MLP activation.")
    norm: Literal["none", "layernorm", "rmsnorm"] = Field("none", description="Normalisation of the stacked frames.")


@hookimpl
def slmzoo_register_components(register):
    register(ComponentSpec(
        kind="adapter", name="stack",
        description="Frame stacking by k + MLP into the LLM width (Ultravox, SLAM-ASR).",
        options=StackOptions, factory="slmzoo_plugins.adapters.stack:StackAdapter",
    ))
