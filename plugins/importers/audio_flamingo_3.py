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

from slmzoo_plugins.importers.transformers_audio import (
    PROCESSOR_FILE,
    ExportError,
    ExportsToTransformers,
    TransformersAudioImporter,
    audio_encoder_fields,
    export_chat_template,
)

#: AudioFlamingo3Processor's default ``max_audio_len`` (seconds): longer audio is truncated.
MAX_AUDIO_LEN = 600


class AudioFlamingo3Importer(ExportsToTransformers, TransformersAudioImporter):
    reference_class = "AudioFlamingo3ForConditionalGeneration"
    export_requires = {"encoder": {"type": "whisper", "pad_to_window": True, "window_attention_mask": True,
                                   "pool": 2, "long_clips": "windows", "window_output": "clip", "layer": "last"},
                       "adapter": {"type": "mlp", "activation": "gelu", "num_layers": 2},
                       "fusion": {"type": "concat"}}
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

    # -- export ---------------------------------------------------------------------------------------------
    @classmethod
    def reference_config(cls, model):
        from transformers import AudioFlamingo3Config

        from slmzoo.components import config_fields

        return AudioFlamingo3Config(audio_config=audio_encoder_fields(model.encoder.config),
                                    text_config=config_fields(model.llm.config), audio_token_id=model.audio_token_id,
                                    projector_hidden_act="gelu", projector_bias=True)

    @classmethod
    def save_processor_files(cls, model, out) -> None:
        """AudioFlamingo3Processor's files: the Whisper features, the tokenizer, a chat template rendering the card's
        prompts from content lists, and the card's cap as ``max_audio_len``."""
        from transformers import AudioFlamingo3Processor, WhisperFeatureExtractor

        windows = model.encoder.max_windows
        if windows is None:
            raise ExportError(f"{model.card.name}: AudioFlamingo3Processor always caps audio (max_audio_len); set "
                              "encoder.max_windows (the audio-flamingo-3 card's 20: 600 s)")
        extractor = WhisperFeatureExtractor(feature_size=model.encoder.config.num_mel_bins, return_attention_mask=True)
        AudioFlamingo3Processor(feature_extractor=extractor, tokenizer=model.tokenizer,
                                chat_template=export_chat_template(model), audio_token=model.processor.audio_tag,
                                default_transcription_prompt=model.processor.prompt.tasks.get(
                                    "asr", "Transcribe the input speech."),
                                max_audio_len=windows * model.encoder.window_samples // 16000).save_pretrained(out)
