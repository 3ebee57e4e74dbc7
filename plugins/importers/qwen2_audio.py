"""Qwen2-Audio-7B and -Instruct (``Qwen2AudioForConditionalGeneration``) -> the ``qwen2-audio`` card.

The audio tower is the whisper encoder (30 s windows, padding masked, AvgPool(2) before the final LayerNorm), the
projector the ``linear`` adapter, the LLM ``hf_causal`` (Qwen2). The prompt: the release's processor chat template
when it ships one (``chat_template.jinja`` / ``.json``); the Hub's main branch ships none, and then transformers'
``Qwen2AudioProcessor.default_chat_template`` applies, which the card's chatml prompt (the default system prompt,
``Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\\n`` before the text) renders token for token (tests/test_importers.py).
Clips over 30 s are cut to 30 s, as the release's feature extractor does.
"""

from __future__ import annotations

from typing import Any

from slmzoo_plugins.importers.transformers_audio import (
    ExportsToTransformers,
    TransformersAudioImporter,
    whisper_tower_fields,
)


class Qwen2AudioImporter(ExportsToTransformers, TransformersAudioImporter):
    reference_class = "Qwen2AudioForConditionalGeneration"
    export_requires = {"encoder": {"type": "whisper", "pad_to_window": True, "window_attention_mask": True,
                                   "pool": 2, "long_clips": "cut", "window_output": "clip", "layer": "last"},
                       "adapter": {"type": "linear", "bias": True}, "fusion": {"type": "concat"}}
    rules = (("model.audio_tower.", "encoder.encoder."), ("model.multi_modal_projector.linear.", "adapter.proj."),
             ("model.language_model.", "llm.model.model."), ("lm_head.", "llm.model.lm_head."))

    def card_blocks(self) -> dict[str, dict[str, Any]]:
        from slmzoo.components import config_fields
        from slmzoo_plugins.encoders.whisper import tower_config

        config = self.hf_config()
        blocks = {"encoder": {"pretrained": None, "config": config_fields(tower_config(config, str(self.folder)))},
                  "llm": self.llm_block(config.text_config)}
        prompt = self.prompt_block()
        if prompt:
            blocks["prompt"] = prompt
        return blocks

    def check(self, model) -> None:
        self.check_whisper_features(model.encoder.config.num_mel_bins)
        self.check_audio_token(model, self.config.get("audio_token_index", self.config.get("audio_token_id")))

    # -- export -----------------------------------------------------------------------------------------------
    @classmethod
    def reference_config(cls, model):
        from transformers import Qwen2AudioConfig

        from slmzoo.components import config_fields

        return Qwen2AudioConfig(audio_config=whisper_tower_fields(model.encoder.config),
                                text_config=config_fields(model.llm.config), audio_token_index=model.audio_token_id)

    @classmethod
    def save_processor_files(cls, model, out) -> None:
        """The feature extractor's settings; no chat template, as the Hub's release: Qwen2AudioProcessor's default
        is the one the card renders."""
        from transformers import WhisperFeatureExtractor

        WhisperFeatureExtractor(feature_size=model.encoder.config.num_mel_bins).save_pretrained(out)
