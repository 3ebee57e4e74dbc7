"""Audio Flamingo 3, the -hf release (``AudioFlamingo3ForConditionalGeneration``) -> the ``audio-flamingo-3`` card.

The audio tower is the whisper encoder (AF-Whisper: 30 s windows, padding masked, AvgPool(2) before the final
LayerNorm), the projector the ``mlp`` adapter (Linear, GELU, Linear, with biases), the LLM ``hf_causal``
(Qwen2.5). The prompt is the release's chat template (``chat_template.jinja`` / ``.json``, else the tokenizer's),
the audio tag ``<sound>``. Longer clips are cut into 30 s windows, each with its own log-mel, encoded one by one
(``long_clips: windows``), as AF3's processor does; its 10 minute cap (``max_audio_len``) is not applied.
"""

from __future__ import annotations

from typing import Any

from slmzoo_plugins.importers.transformers_audio import TransformersAudioImporter


class AudioFlamingo3Importer(TransformersAudioImporter):
    rules = (("model.audio_tower.", "encoder.encoder."), ("model.multi_modal_projector.linear_1.", "adapter.mlp.0."),
             ("model.multi_modal_projector.linear_2.", "adapter.mlp.2."), ("model.language_model.", "llm.model.model."),
             ("lm_head.", "llm.model.lm_head."))

    def card_blocks(self) -> dict[str, dict[str, Any]]:
        from slmzoo.components import config_fields
        from slmzoo_plugins.encoders.whisper import tower_config

        config = self.hf_config()
        if config.projector_hidden_act != "gelu":
            raise self.fail(f"config.json projector_hidden_act {config.projector_hidden_act!r}: the card's "
                            "projector uses gelu")
        prompt = self.prompt_block()
        if "chat_template" not in prompt:
            prompt["chat_template"] = None  # the tokenizer's own
        prompt["system"] = None  # the release's template decides the system prompt
        return {"encoder": {"pretrained": None, "config": config_fields(tower_config(config, str(self.folder)))},
                "llm": self.llm_block(config.text_config), "prompt": prompt}

    def check(self, model) -> None:
        self.check_whisper_features(model.encoder.config.num_mel_bins)
        self.check_audio_token(model, self.config.get("audio_token_id"))
