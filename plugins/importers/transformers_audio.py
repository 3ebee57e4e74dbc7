"""What the importers of transformers-implemented audio LLMs share: transformers' two weight layouts, the
release's config, dtype, tokenizer files and Whisper feature-extractor settings.

transformers 4.x saved these models (and the Hub holds them) in the legacy layout: ``audio_tower.*``,
``multi_modal_projector.*``, ``language_model.model.*``, ``language_model.lm_head.*``. transformers 5 renames them
at load (``conversion_mapping.py``, ``qwen2_audio`` and ``granite_speech``) into ``model.audio_tower.*``,
``model.multi_modal_projector.*``, ``model.language_model.*``, ``lm_head.*``, and writes the legacy layout back on
save. Both load here: legacy names are normalised to v5's, the importers' rules are written for v5's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slmzoo.importing import Importer, ReleaseError

#: transformers' ``qwen2_audio`` conversion (shared by Voxtral, Audio Flamingo 3, GLM-ASR): legacy -> v5 prefix.
LEGACY_QWEN2_AUDIO = (("language_model.lm_head.", "lm_head."), ("language_model.model.", "model.language_model."),
                      ("audio_tower.", "model.audio_tower."),
                      ("multi_modal_projector.", "model.multi_modal_projector."))
PREPROCESSOR_FILE = "preprocessor_config.json"
PROCESSOR_FILE = "processor_config.json"
GENERATION_FILE = "generation_config.json"
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
DTYPES = ("float32", "bfloat16", "float16")


class ExportError(ReleaseError):
    """A model whose card is not the architecture the reference class computes."""


class TransformersAudioImporter(Importer):
    """An audio LLM transformers implements, saved by ``save_pretrained``; and the way back out (``export``)."""

    legacy: tuple[tuple[str, str], ...] = LEGACY_QWEN2_AUDIO

    def normalise(self, name: str) -> str:
        for old, new in self.legacy:
            if name.startswith(old):
                return new + name[len(old):]
        return name

    # -- the release's files ------------------------------------------------------------------------------
    def hf_config(self):
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(str(self.folder))
        except Exception as error:  # a config transformers cannot read: name the file and the reason
            raise self.fail(f"config.json: transformers cannot read it ({error})") from None

    def dtype(self, default: str = "float32") -> str:
        """The dtype the release's weights are saved in (``dtype`` / ``torch_dtype`` of its config)."""
        text = self.config.get("text_config") or {}
        for value in (self.config.get("dtype"), self.config.get("torch_dtype"), text.get("dtype"),
                      text.get("torch_dtype")):
            if value in DTYPES:
                return value
        return default

    def llm_block(self, text_config) -> dict[str, Any]:
        """The ``llm`` keys of a release whose LLM is a transformers causal LM of ``text_config``; the tokenizer
        comes from the release folder (the processor's ``tokenizer_dir``), so the card names none."""
        from slmzoo.components import config_fields

        return {"pretrained": None, "tokenizer": None, "config": config_fields(text_config), "dtype": self.dtype()}

    def prompt_block(self) -> dict[str, Any]:
        """The ``prompt`` keys the release decides: its processor's chat template when it ships one, and the
        tokens its ``generation_config.json`` stops at."""
        block: dict[str, Any] = {}
        template = self.chat_template()
        if template is not None:
            block["chat_template"] = template
        stops = self.stop_tokens()
        if stops:
            block["stop_tokens"] = stops
        return block

    def stop_tokens(self) -> list[str]:
        """``generation_config.json``'s ``eos_token_id`` (one id or several) as tokens of the release's tokenizer."""
        file = self.folder / GENERATION_FILE
        ids = json.loads(file.read_text(encoding="utf-8")).get("eos_token_id") if file.is_file() else None
        if ids is None:
            return []
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(self.tokenizer_dir()))
        return [tokenizer.convert_ids_to_tokens(i) for i in ([ids] if isinstance(ids, int) else ids)]

    def chat_template(self) -> str | None:
        """The processor's chat template the release ships (``chat_template.jinja`` / ``.json``), if any."""
        for name in CHAT_TEMPLATE_FILES:
            file = self.folder / name
            if file.is_file():
                text = file.read_text(encoding="utf-8")
                return json.loads(text)["chat_template"] if name.endswith(".json") else text
        return None

    def processor_settings(self) -> dict[str, Any]:
        """The processor's own settings (``processor_config.json``: AF3's ``max_audio_len``, ...), if it has any."""
        file = self.folder / PROCESSOR_FILE
        return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}

    def preprocessor(self) -> dict[str, Any]:
        """The feature extractor's settings: ``preprocessor_config.json`` (the Hub's releases), or the
        ``feature_extractor`` of ``processor_config.json`` (what transformers 5 writes)."""
        file = self.folder / PREPROCESSOR_FILE
        if file.is_file():
            return json.loads(file.read_text(encoding="utf-8"))
        return self.processor_settings().get("feature_extractor", {})

    def check_whisper_features(self, num_mel_bins: int) -> None:
        """The release's WhisperFeatureExtractor settings are those the whisper encoder computes (it computes its
        log-mel itself, in torch); a release with other settings is refused, naming them."""
        from slmzoo_plugins.encoders.features import HOP_LENGTH, N_FFT, SAMPLING_RATE

        expected = {"feature_size": num_mel_bins, "sampling_rate": SAMPLING_RATE, "hop_length": HOP_LENGTH,
                    "n_fft": N_FFT, "chunk_length": 30, "dither": 0.0, "padding_value": 0.0}
        settings = self.preprocessor()
        kind = settings.get("feature_extractor_type", "WhisperFeatureExtractor")
        wrong = [f"{key} {settings[key]!r} (the whisper encoder computes {value!r})" for key, value in expected.items()
                 if key in settings and settings[key] != value]
        if kind != "WhisperFeatureExtractor":
            wrong.insert(0, f"feature_extractor_type {kind!r} (expected WhisperFeatureExtractor)")
        if wrong:
            raise self.fail(f"{PREPROCESSOR_FILE}: " + "; ".join(wrong))

    def check_audio_token(self, model, audio_token_id: int | None) -> None:
        """The release's ``audio_token_id`` is the id its tokenizer gives the card's audio tag."""
        tag = model.processor.audio_tag
        ours = model.processor.audio_token_id
        if audio_token_id is not None and ours != audio_token_id:
            raise self.fail(f"config.json audio_token_id {audio_token_id} but the release's tokenizer gives "
                            f"{tag} the id {ours}")


def whisper_tower_fields(config) -> dict[str, Any]:
    """The audio-tower config fields (Qwen2-Audio's names) of the whisper encoder's ``WhisperConfig``."""
    from slmzoo_plugins.encoders.whisper import TOWER_FIELDS

    return {field: getattr(config, field) for field in TOWER_FIELDS}


# -- the way back out ---------------------------------------------------------------------------------------------
class ExportsToTransformers:
    """An importer family that also writes its release's layout (``slmzoo export --to transformers``): it names the
    class, the card options that class computes, and builds the class's config and processor files from a model."""

    #: The transformers class of the release (``export`` writes its checkpoint).
    reference_class: str = ""
    #: ``{section: {option: value}}`` a model's card must have for the reference class to compute it.
    export_requires: dict[str, dict[str, Any]] = {}

    @classmethod
    def export(cls, model, out: Path) -> None:
        export(cls, model, out)

    @classmethod
    def reference_config(cls, model):  # pragma: no cover - each family writes its own
        raise NotImplementedError

    @classmethod
    def save_processor_files(cls, model, out: Path) -> None:  # pragma: no cover - each family writes its own
        raise NotImplementedError

    @classmethod
    def detach_lora(cls, model, out: Path) -> None:
        """Before the weights are written: a LoRA'd LLM merged (``W + (alpha / r) B A``), as the reference class has
        no LoRA; a family whose release ships its LoRA beside the weights writes it into ``out`` instead."""
        if hasattr(model.llm.model, "merge_and_unload"):
            model.llm.model = model.llm.model.merge_and_unload()

    @classmethod
    def generation_settings(cls, model, config) -> dict[str, Any]:
        """``generation_config.json``: the card's stop tokens, padding and BOS."""
        stops = model.processor.stop_token_ids
        return {"eos_token_id": stops if len(stops) > 1 else stops[0], "pad_token_id": model.pad_token_id,
                "bos_token_id": config.get_text_config().bos_token_id}


def export(importer: type[TransformersAudioImporter], model, out) -> None:
    """``model`` (a card of ``importer``'s architecture) as the reference's own checkpoint in ``out``: its config,
    weights (``save_pretrained``: sharded, legacy names), generation config, tokenizer and processor files, so that
    transformers' class loads it unchanged. A LoRA'd LLM is merged first."""
    import transformers

    _check_exportable(importer, model)
    out = Path(out)
    importer.detach_lora(model, out)
    config = importer.reference_config(model)
    reference = getattr(transformers, importer.reference_class)(config).eval()
    ours = model.state_dict()
    state = {importer.release_name(name): tensor for name, tensor in ours.items()}
    unmapped = sorted(name for name, theirs in state.items() if theirs is None)
    state.pop(None, None)
    expected = reference.state_dict()
    problems = [f"tensors no rule maps: {', '.join(unmapped[:8])}"] if unmapped else []
    missing = sorted(set(expected) - set(state))
    if missing:
        problems.append(f"the reference needs tensors the model lacks: {', '.join(missing[:8])}")
    problems += [f"{name}: shape {tuple(t.shape)}, the reference expects {tuple(expected[name].shape)}"
                 for name, t in sorted(state.items()) if name in expected and t.shape != expected[name].shape]
    if problems:
        raise ExportError(f"{model.card.name}: cannot export to {importer.reference_class}: " + "; ".join(problems))
    reference.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)
    reference.generation_config.update(**importer.generation_settings(model, config))
    reference.save_pretrained(out)
    model.tokenizer.save_pretrained(out)
    for name in CHAT_TEMPLATE_FILES:  # the tokenizer's template renders slmzoo's prompt text, not content lists
        (out / name).unlink(missing_ok=True)
    importer.save_processor_files(model, out)


def export_chat_template(model) -> str:
    """A chat template that renders, for transformers' processors, the prompts the card renders: each message's
    content list (``{"type": "audio"}`` / ``{"type": "text", "text": ...}`` items) becomes the text the card's
    ``prompt.user_format`` makes of it (one audio tag per audio item, the texts joined, stripped; a text holding the
    tag kept as it is), the card's default system prompt goes first unless the chat has one, and then the card's
    own template (the tokenizer's) renders the messages. A message whose content is a string is taken as it is."""
    prompt = model.processor.prompt
    tag, user_format = json.dumps(prompt.audio_tag), json.dumps(prompt.user_format)
    system = json.dumps(prompt.system) if prompt.system else "none"
    prelude = (
        "{%- set ns = namespace(messages=[]) -%}"
        "{%- for m in messages -%}"
        "{%- if m['content'] is string -%}{%- set content = m['content'] -%}"
        "{%- else -%}{%- set parts = namespace(audio='', text='') -%}"
        "{%- for c in m['content'] -%}"
        f"{{%- if c['type'] == 'audio' -%}}{{%- set parts.audio = parts.audio + {tag} -%}}"
        "{%- elif c['type'] == 'text' -%}{%- set parts.text = parts.text + c['text'] -%}{%- endif -%}"
        "{%- endfor -%}"
        f"{{%- if {tag} in parts.text -%}}{{%- set content = parts.text -%}}"
        f"{{%- else -%}}{{%- set content = {user_format}.replace('{{audio}}', parts.audio)"
        ".replace('{instruction}', parts.text) | trim -%}{%- endif -%}"
        "{%- endif -%}"
        "{%- set ns.messages = ns.messages + [{'role': m['role'], 'content': content}] -%}"
        "{%- endfor -%}"
        f"{{%- set system = {system} -%}}"
        "{%- if system and not (ns.messages | selectattr('role', 'equalto', 'system') | list) -%}"
        "{%- set ns.messages = [{'role': 'system', 'content': system}] + ns.messages -%}{%- endif -%}"
        "{%- set messages = ns.messages -%}"
    )
    return prelude + model.tokenizer.chat_template


def audio_encoder_fields(config) -> dict[str, Any]:
    """:func:`whisper_tower_fields` under the names of the newer audio-encoder configs (Voxtral's, AF3's)."""
    renamed = {"d_model": "hidden_size", "encoder_layers": "num_hidden_layers",
               "encoder_attention_heads": "num_attention_heads", "encoder_ffn_dim": "intermediate_size"}
    return {renamed.get(key, key): value for key, value in whisper_tower_fields(config).items()}


def _check_exportable(importer, model) -> None:
    wrong = []
    for section, options in importer.export_requires.items():
        block = model.card.data.get(section) or {}
        wrong += [f"{section}.{key} is {block.get(key)!r} (the reference computes {value!r})"
                  for key, value in options.items() if block.get(key) != value]
    if wrong:
        raise ExportError(f"{model.card.name}: {importer.reference_class} does not compute this card: "
                          + "; ".join(wrong))
