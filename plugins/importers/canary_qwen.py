"""NVIDIA canary-qwen-2.5b, NeMo speechlm2's SALM (``config.json`` = the training config's ``model`` section,
``model.safetensors``) -> the ``salm`` card.

What NeMo's ``SALM`` builds (``nemo/collections/speechlm2/models/salm.py``, ``modules/perception.py``) and this maps:

- ``perception.preprocessor`` (AudioToMelSpectrogramPreprocessor) -> the conformer encoder's log-mel with the
  checkpoint's own mel filterbank and window (``featurizer.fb`` / ``featurizer.window``, bf16: ``filterbank:
  stored``), its pre-emphasis and normalisation, and no dither (the config's dither is training noise);
- ``perception.encoder`` (FastConformer) -> ``conformer`` / ``fastconformer`` (transformers' ParakeetEncoder, names
  by ``nemo_checkpoint``'s table); ``perception.modality_adapter`` must be the parameter-free IdentityConnector and
  ``perception.proj`` is the ``linear`` adapter;
- ``llm`` (peft-wrapped, LoRA unmerged) + the top-level ``embed_tokens`` -> ``hf_causal`` with the config's
  ``lora``, its tensors in peft's layout as saved; the head is tied to ``embed_tokens``;
- the tokenizer and LLM config are ``pretrained_llm``'s (the repo ships none): a folder, or a Hub id fetched
  through the huggingface_hub cache (configs and tokenizer only); the audio
  locator tag is added to it as a special token and a single one is replaced by the whole clip;
- the prompt is NeMo's ``qwen`` formatter: ``<|im_start|>user\\n{text} {tag}<|im_end|>\\n<|im_start|>assistant\\n``,
  no system prompt (the card's chatml).

Inferred from NeMo's code, not read from the released files: the tensor names (``llm.base_model.model.*``,
``perception.*``), the ``lora`` keys (peft's ``LoraConfig`` arguments) and that ``prompt_format`` is ``qwen``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmzoo.importing import Importer

IDENTITY_CONNECTOR = "IdentityConnector"
PEFT_LLM = "llm.model.base_model.model.model."
#: The NeMo preprocessor settings the conformer's log-mel computes; others are refused, naming them.
PREPROCESSOR_REQUIRES = {"window": "hann", "log": True, "frame_splicing": 1, "mag_power": 2.0, "pad_to": 0,
                         "exact_pad": False}


class CanaryQwenImporter(Importer):
    def __init__(self, spec, folder):
        super().__init__(spec, folder)
        self.perception = self.config.get("perception") or {}
        self.lora = self.config.get("lora")

    # -- the card ----------------------------------------------------------------------------------------------
    def llm_folder(self) -> Path:
        """``pretrained_llm``'s config and tokenizer (a Hub id as NeMo writes it, or a folder): the release ships
        neither. Its weights are not fetched: the release holds the LLM's."""
        if getattr(self, "_llm_folder", None) is None:
            from slmzoo.hub.sources import HubError, named_backbone

            source = self.config.get("pretrained_llm")
            if not source:
                raise self.fail("config.json names no pretrained_llm (the LLM whose config and tokenizer SALM uses)")
            try:
                folder = named_backbone(source, weights=False)
            except HubError as error:
                raise self.fail(f"config.json pretrained_llm {source!r}: {error}") from None
            if not (folder / "config.json").is_file():
                raise self.fail(f"config.json pretrained_llm {source!r}: {folder} has no config.json")
            self._llm_folder = folder
        return self._llm_folder

    def tokenizer_dir(self) -> Path:
        return self.llm_folder()

    def card_blocks(self) -> dict[str, dict[str, Any]]:
        from transformers import AutoConfig

        from slmzoo.components import config_fields
        from slmzoo_plugins.encoders.conformer import FEATURE_KEYS
        from slmzoo_plugins.encoders.nemo_checkpoint import encoder_fields, feature_fields

        pre, encoder = self.perception.get("preprocessor") or {}, self.perception.get("encoder") or {}
        connector = (self.perception.get("modality_adapter") or {}).get("_target_", "")
        if not connector.endswith(IDENTITY_CONNECTOR):
            raise self.fail(f"perception.modality_adapter {connector!r}: the salm card maps the {IDENTITY_CONNECTOR} "
                            "(no parameters) and perception.proj only")
        wrong = [f"{key} {pre[key]!r} (the encoder computes {value!r})" for key, value in PREPROCESSOR_REQUIRES.items()
                 if key in pre and pre[key] != value]
        if encoder.get("self_attention_model", "rel_pos") != "rel_pos":
            wrong.append(f"encoder.self_attention_model {encoder['self_attention_model']!r} (rel_pos)")
        if self.config.get("prompt_format", "qwen") != "qwen":
            wrong.append(f"prompt_format {self.config['prompt_format']!r} (the card renders NeMo's qwen format)")
        if wrong:
            raise self.fail("config.json perception: " + "; ".join(wrong))
        features = {k: v for k, v in feature_fields(pre).items() if k in FEATURE_KEYS}
        features.update(normalize=pre.get("normalize", "per_feature"), filterbank="stored")
        llm_config = AutoConfig.from_pretrained(str(self.llm_folder()))
        output_dim = self.perception.get("output_dim")
        if output_dim is not None and output_dim != llm_config.get_text_config().hidden_size:
            raise self.fail(f"perception.output_dim {output_dim} but {self.llm_folder()} has hidden_size "
                            f"{llm_config.get_text_config().hidden_size}")
        return {
            "encoder": {"type": "conformer", "variant": "fastconformer", "pretrained": None,
                        "config": encoder_fields(encoder), "feature_extractor": features},
            "adapter": {"type": "linear", "bias": True},
            "llm": {"type": "hf_causal", "pretrained": None, "tokenizer": None, "config": config_fields(llm_config),
                    "dtype": self.dtype(), "lora": self.lora_options()},
            "prompt": {"audio_tag": self.config.get("audio_locator_tag", "<|audioplaceholder|>"),
                       "chat_template": "chatml", "system": None, "user_format": "{instruction} {audio}"},
        }

    def lora_options(self) -> dict[str, Any] | None:
        if not self.lora:
            return None
        targets = self.lora.get("target_modules") or ["q_proj", "v_proj"]
        return {"r": self.lora.get("r", 8), "alpha": self.lora.get("lora_alpha", 8),
                "dropout": self.lora.get("lora_dropout", 0.0), "target_modules": list(targets)}

    def dtype(self) -> str:
        """The dtype ``embed_tokens`` is saved in (NeMo's config names none)."""
        from safetensors import safe_open

        with safe_open(str(self.folder / "model.safetensors"), framework="pt") as reader:
            name = str(reader.get_slice("embed_tokens.weight").get_dtype()).lower()
        return {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}.get(name, "float32")

    # -- the weights -------------------------------------------------------------------------------------------
    def skips(self, release_name: str) -> bool:
        # NeMo's relative positional table: a buffer ParakeetEncoder computes itself.
        return release_name == "perception.encoder.pos_enc.pe"

    def model_name(self, release_name: str) -> str | None:
        from slmzoo_plugins.encoders.nemo_checkpoint import nemo_encoder_name

        embed = (PEFT_LLM if self.lora else "llm.model.model.") + "embed_tokens."
        if release_name == "perception.preprocessor.featurizer.fb":
            return "encoder.features.mel_filters"
        if release_name == "perception.preprocessor.featurizer.window":
            return "encoder.features.window"
        for theirs, ours in (("perception.encoder.", "encoder.model."), ("perception.proj.", "adapter.proj."),
                             ("embed_tokens.", embed), ("llm.", "llm.model.")):  # peft's layout or none
            if release_name.startswith(theirs):
                rest = release_name[len(theirs):]
                return ours + (nemo_encoder_name(rest) if theirs == "perception.encoder." else rest)
        return None

    def convert(self, model_name: str, tensor):
        if model_name == "encoder.features.mel_filters":
            return tensor.reshape(tensor.shape[-2:])  # NeMo keeps [1, n_mels, n_freq]
        return tensor
