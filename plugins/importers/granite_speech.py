"""Granite Speech 3.3 2B and 8B (``GraniteSpeechForConditionalGeneration``) -> the ``granite-speech`` card.

The encoder is ``granite_ctc`` (transformers' GraniteSpeechCTCEncoder on the release's stacked log-mels), the
projector ``window_qformer`` (GraniteSpeechEncoderProjector: ``window_size`` frames, ``window_size /
downsample_rate`` queries, the last window zero-padded), the LLM ``hf_causal`` (Granite, tied embeddings: a release
without ``lm_head`` is complete). The prompt is the release tokenizer's own chat template (its default system
prompt included), the audio tag ``<|audio|>``.

The LoRA ships beside the weights (``adapter_config.json`` + ``adapter_model.safetensors``, peft's files): it
becomes the card's ``llm.lora`` and its tensors load into the peft-wrapped LLM as saved (unmerged). As transformers
enables it only when it is given audio (``enable_adapters`` / ``disable_adapters`` in ``generate``), it is
``audio_only``: rows whose prompt has no audio run the plain Granite LLM.
"""

from __future__ import annotations

import json
import re
from typing import Any

from slmzoo_plugins.importers.transformers_audio import (
    PREPROCESSOR_FILE,
    PROCESSOR_FILE,
    ExportsToTransformers,
    TransformersAudioImporter,
    export_chat_template,
)

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
LLM, HEAD = "llm.model.model.", "llm.model.lm_head."
PEFT_LLM, PEFT_HEAD = "llm.model.base_model.model.model.", "llm.model.base_model.model.lm_head."
#: transformers' ``granite_speech`` conversion: legacy -> v5 prefix.
LEGACY_GRANITE = (("language_model.lm_head.", "lm_head."), ("language_model.model.", "model.language_model."),
                  ("encoder.", "model.encoder."), ("projector.", "model.projector."))


class GraniteSpeechImporter(ExportsToTransformers, TransformersAudioImporter):
    reference_class = "GraniteSpeechForConditionalGeneration"
    export_requires = {"encoder": {"type": "granite_ctc", "layer": "last"},
                       "adapter": {"type": "window_qformer", "last_window": "zeros", "stride": None,
                                   "input_norm": False},
                       "fusion": {"type": "concat"}}
    legacy = LEGACY_GRANITE
    rules = (("model.encoder.", "encoder.model."), ("model.projector.query", "adapter.query"),
             ("model.projector.qformer.", "adapter.qformer."), ("model.projector.linear.", "adapter.linear."),
             ("model.language_model.", LLM), ("lm_head.", HEAD))

    def __init__(self, spec, folder):
        super().__init__(spec, folder)
        file = self.folder / ADAPTER_CONFIG
        self.lora = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None

    # -- the card ------------------------------------------------------------------------------------------------
    def card_blocks(self) -> dict[str, dict[str, Any]]:
        from slmzoo.components import config_fields
        from slmzoo_plugins.encoders.granite_ctc import saved_feature_settings

        config = self.hf_config()
        projector = config.projector_config
        if config.window_size % config.downsample_rate:
            raise self.fail(f"config.json window_size {config.window_size} is not a multiple of downsample_rate "
                            f"{config.downsample_rate}")
        llm = self.llm_block(config.text_config)
        llm["lora"] = self.lora_options()
        if config.has_lora_adapter and llm["lora"] is None:
            raise self.fail(f"config.json has_lora_adapter is true but the folder has no {ADAPTER_CONFIG}")
        # The tokenizer's own template decides the system prompt (Granite's names the date and its knowledge cutoff).
        prompt = {"chat_template": None, "system": None, "audio_tag": "<|audio|>", "stop_tokens": self.stop_tokens()}
        return {
            "encoder": {"pretrained": None, "config": config_fields(config.encoder_config),
                        "feature_extractor": saved_feature_settings(str(self.folder), None)},
            "adapter": {"window": config.window_size, "num_queries": config.window_size // config.downsample_rate,
                        "num_layers": projector.num_hidden_layers, "hidden_size": projector.hidden_size,
                        "num_heads": projector.num_attention_heads, "intermediate_size": projector.intermediate_size,
                        "cross_attention_every": projector.cross_attention_frequency},
            "llm": llm, "prompt": prompt}

    def lora_options(self) -> dict[str, Any] | None:
        if self.lora is None:
            return None
        targets = self.lora.get("target_modules") or []
        return {"r": self.lora["r"], "alpha": self.lora["lora_alpha"], "dropout": self.lora.get("lora_dropout", 0.0),
                "target_modules": sorted(targets) if isinstance(targets, list) else [targets], "audio_only": True}

    def check(self, model) -> None:
        self.check_audio_token(model, self.config.get("audio_token_index", self.config.get("audio_token_id")))
        settings = self.preprocessor()
        for key, ours in (("projector_window_size", model.adapter.window),
                          ("projector_downsample_rate", model.adapter.window // model.adapter.num_queries)):
            if key in settings and settings[key] != ours:
                raise self.fail(f"preprocessor_config.json {key} {settings[key]} but config.json gives {ours}")

    # -- the weights: the base model's shards and peft's adapter file --------------------------------------------
    def release_tensors(self):
        tensors = super().release_tensors()
        if self.lora is not None:
            from safetensors.torch import load_file

            file = self.folder / ADAPTER_WEIGHTS
            if not file.is_file():
                raise self.fail(f"{ADAPTER_CONFIG} without {ADAPTER_WEIGHTS}")
            tensors.update(load_file(file))
        return tensors

    def normalise(self, name: str) -> str:
        name = name.removeprefix("base_model.model.")  # peft's prefix in adapter files
        return super().normalise(name)

    def model_name(self, release_name: str) -> str | None:
        """With the LoRA, LLM tensors live in peft's wrapper: targeted layers keep their weight as
        ``base_layer``, the adapter's ``lora_A/B.weight`` are peft's ``default`` adapter."""
        name = super().model_name(release_name)
        if name is None or self.lora is None:
            return name
        name = PEFT_LLM + name[len(LLM):] if name.startswith(LLM) else PEFT_HEAD + name[len(HEAD):] \
            if name.startswith(HEAD) else name
        targets = "|".join(map(re.escape, self.lora_options()["target_modules"]))
        name = re.sub(rf"\.({targets})\.(weight|bias)$", r".\1.base_layer.\2", name)
        return re.sub(r"\.(lora_[AB])\.weight$", r".\1.default.weight", name)

    # -- export: the release's layout, its LoRA in peft's files beside the weights --------------------------------
    @classmethod
    def detach_lora(cls, model, out) -> None:
        """An ``audio_only`` LoRA is written as the release ships it (``adapter_config.json`` +
        ``adapter_model.safetensors``, which transformers loads through peft and enables only with audio) and the
        LLM keeps its base weights; any other LoRA is merged."""
        lora = model.card.data["llm"].get("lora") or {}
        if not lora.get("audio_only"):
            return super().detach_lora(model, out)
        from safetensors.torch import save_file

        tensors = {}
        for name, tensor in model.state_dict().items():
            if ".lora_A." in name or ".lora_B." in name:
                ours = LLM + name[len(PEFT_LLM):].replace(".default.weight", ".weight")
                tensors["base_model.model." + cls.legacy_name(cls.release_name(ours))] = tensor.contiguous()
        model.llm.model = model.llm.model.unload()  # the base weights, the LoRA left out
        out.mkdir(parents=True, exist_ok=True)
        save_file(tensors, out / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        (out / ADAPTER_CONFIG).write_text(json.dumps({
            "peft_type": "LORA", "r": lora["r"], "lora_alpha": lora["alpha"], "lora_dropout": lora["dropout"],
            "target_modules": list(lora["target_modules"]), "bias": "none", "task_type": None,
            "base_model_name_or_path": None}, indent=2))

    @classmethod
    def legacy_name(cls, name: str) -> str:
        """A v5 name in the layout the Hub holds (the inverse of :meth:`normalise`)."""
        for old, new in cls.legacy:
            if name.startswith(new):
                return old + name[len(new):]
        return name

    @classmethod
    def reference_config(cls, model):
        from transformers import GraniteSpeechConfig

        from slmzoo.components import config_fields

        adapter = model.adapter
        projector = {**adapter.qformer.config.to_dict(), "model_type": "blip_2_qformer"}
        return GraniteSpeechConfig(
            encoder_config=config_fields(model.encoder.model.config), projector_config=projector,
            text_config=config_fields(model.llm.config), audio_token_index=model.audio_token_id,
            has_lora_adapter=bool((model.card.data["llm"].get("lora") or {}).get("audio_only")),
            window_size=adapter.window, downsample_rate=adapter.window // adapter.num_queries)

    @classmethod
    def save_processor_files(cls, model, out) -> None:
        """GraniteSpeechProcessor's files as the release has them (its feature extractor's torchaudio settings, the
        projector's window), and the tokenizer's chat template: the card's prompts, its system prompt included."""
        settings = dict(model.encoder.feature_settings)
        rate = settings.pop("sampling_rate")
        adapter = model.adapter
        # Top-level keys (what GraniteSpeechFeatureExtractor reads) and melspec_kwargs (what the 3.3 releases hold).
        (out / PREPROCESSOR_FILE).write_text(json.dumps({
            "feature_extractor_type": "GraniteSpeechFeatureExtractor", "sampling_rate": rate, **settings,
            "melspec_kwargs": {"sample_rate": rate, **settings}, "projector_window_size": adapter.window,
            "projector_downsample_rate": adapter.window // adapter.num_queries}, indent=2))
        (out / PROCESSOR_FILE).write_text(json.dumps({"processor_class": "GraniteSpeechProcessor",
                                                      "audio_token": model.processor.audio_tag}, indent=2))
        own, model.tokenizer.chat_template = model.tokenizer.chat_template, export_chat_template(model)
        try:
            model.tokenizer.save_pretrained(out)
        finally:
            model.tokenizer.chat_template = own
