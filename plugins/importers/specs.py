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
    ImporterSpec(
        name="granite-speech", card="granite-speech",
        description="Granite Speech 3.3 2B and 8B (transformers' GraniteSpeechForConditionalGeneration; its LoRA "
                    "from adapter_config.json / adapter_model.safetensors).",
        factory="slmzoo_plugins.importers.granite_speech:GraniteSpeechImporter",
        architectures=("GraniteSpeechForConditionalGeneration",), model_types=("granite_speech",)),
    ImporterSpec(
        name="audio-flamingo-3", card="audio-flamingo-3",
        description="Audio Flamingo 3, the -hf release (transformers' AudioFlamingo3ForConditionalGeneration).",
        factory="slmzoo_plugins.importers.audio_flamingo_3:AudioFlamingo3Importer",
        architectures=("AudioFlamingo3ForConditionalGeneration",), model_types=("audioflamingo3",)),
    ImporterSpec(
        name="canary-qwen", card="salm",
        description="NVIDIA canary-qwen-2.5b, NeMo speechlm2's SALM (config.json + model.safetensors; the LLM's "
                    "config and tokenizer from pretrained_llm).",
        factory="slmzoo_plugins.importers.canary_qwen:CanaryQwenImporter",
        config_keys=("perception", "pretrained_llm", "audio_locator_tag")),
    ImporterSpec(
        name="ultravox", card="ultravox",
        description="Ultravox v0.5 / v0.6 (fixie-ai's UltravoxModel): audio tower and projector from the release, "
                    "the LLM from its text_model_id.",
        factory="slmzoo_plugins.importers.ultravox:UltravoxImporter",
        architectures=("UltravoxModel",), model_types=("ultravox",)),
)


@hookimpl
def slmzoo_register_importers(register):
    for spec in IMPORTERS:
        register(spec)
