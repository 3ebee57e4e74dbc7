"""Audio Flamingo 3, the -hf release (``AudioFlamingo3ForConditionalGeneration``) -> the ``audio-flamingo-3`` card.

The audio tower is the whisper encoder (AF-Whisper: 30 s windows, padding masked, AvgPool(2) before the final
LayerNorm), the projector the ``mlp`` adapter (Linear, GELU, Linear, with biases), the LLM ``hf_causal``
(Qwen2.5). The prompt is the release's chat template (``chat_template.jinja`` / ``.json``, else the tokenizer's),
the audio tag ``<sound>``. Longer clips are cut into 30 s windows, each with its own log-mel, encoded one by one
(``long_clips: windows``), as AF3's processor does, at most ``max_audio_len`` seconds of them (its
``processor_config.json``; AudioFlamingo3Processor's default 600 s: 20 windows): the rest of a longer clip is cut off,
with a warning, as the processor truncates it.
"""

from __future__ import annotations

from typing import Any

from slmzoo_plugins.importers.transformers_audio import PROCESSOR_FILE, TransformersAudioImporter

#: AudioFlamingo3Processor's default ``max_audio_len`` (seconds): longer audio is truncated.
MAX_AUDIO_LEN = 600


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
        return {"encoder": {"pretrained": None, "config": config_fields(tower_config(config, str(self.folder))),
                            "max_windows": self.max_windows()},
                "llm": self.llm_block(config.text_config), "prompt": prompt}

    def max_windows(self) -> int:
        """AudioFlamingo3Processor's cap, ``max_audio_len // chunk_length`` windows (``_process_audio``)."""
        seconds = self.processor_settings().get("max_audio_len", MAX_AUDIO_LEN)
        windows = int(seconds // self.preprocessor().get("chunk_length", 30))
        if windows < 1:
            raise self.fail(f"{PROCESSOR_FILE} max_audio_len {seconds}: shorter than one 30 s window")
        return windows

    def check(self, model) -> None:
        self.check_whisper_features(model.encoder.config.num_mel_bins)
        self.check_audio_token(model, self.config.get("audio_token_id"))
