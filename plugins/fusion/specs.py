"""Fusion specs. Imports no torch; implementations load on build."""

from __future__ import annotations

from slmzoo import hookimpl
from slmzoo.registry import ComponentOptions, ComponentSpec


class ConcatOptions(ComponentOptions):
    """Audio embeddings replace the audio tag in the token embeddings (SALM, Qwen-Audio, LLaSM)."""


@hookimpl
def slmzoo_register_components(register):
    register(ComponentSpec(
        kind="fusion", name="concat",
        description="Audio embeddings replace each audio tag of the prompt (SALM).",
        options=ConcatOptions, factory="slmzoo_plugins.fusion.concat:ConcatFusion",
    ))
