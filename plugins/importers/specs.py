"""Importer specs: which releases each importer recognises. Imports no torch; implementations load on import."""

from __future__ import annotations

from slmzoo import hookimpl
from slmzoo.registry import ImporterSpec

IMPORTERS = (
    ImporterSpec(
        name="qwen2-audio", card="qwen2-audio",
        description="Qwen2-Audio-7B and -Instruct (transformers' Qwen2AudioForConditionalGeneration).",
        factory="slmzoo_plugins.importers.qwen2_audio:Qwen2AudioImporter",
        architectures=("Qwen2AudioForConditionalGeneration",), model_types=("qwen2_audio",)),
    ImporterSpec(
        name="voxtral", card="voxtral",
        description="Voxtral Mini 3B and Small 24B (transformers' VoxtralForConditionalGeneration; tekken.json "
                    "tokenizer).",
        factory="slmzoo_plugins.importers.voxtral:VoxtralImporter",
        architectures=("VoxtralForConditionalGeneration",), model_types=("voxtral",)),
)


@hookimpl
def slmzoo_register_importers(register):
    for spec in IMPORTERS:
        register(spec)
