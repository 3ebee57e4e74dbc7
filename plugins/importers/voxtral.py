"""Voxtral Mini 3B and Small 24B (``VoxtralForConditionalGeneration``) -> the ``voxtral`` card.

The audio tower is the whisper encoder on 30 s windows (a clip padded to a multiple of 30 s, each window encoded
unmasked, every frame kept), the projector the ``stack`` adapter (4 frames, Linear, GELU, Linear, no biases), the
LLM ``hf_causal`` (Llama). The release tokenizes with mistral-common from ``tekken.json`` (no Jinja template, no
``tokenizer.json``): the importer converts the tekken vocabulary with transformers' own converter and renders
mistral-common's two request layouts with :data:`TEMPLATE`, checked token for token against mistral-common
(tests/test_importers.py):

- chat: ``<s>[INST][BEGIN_AUDIO][AUDIO]...{text}[/INST]`` (no default system prompt);
- transcription (an instruction ending in ``[TRANSCRIBE]``, e.g. the card's ``lang:en[TRANSCRIBE]``):
  ``<s>[INST][BEGIN_AUDIO][AUDIO]...[/INST]lang:en[TRANSCRIBE]``.

``tekken.json``'s audio settings (16 kHz, 12.5 audio tokens per second, 30 s chunks, the mel settings) must be those
the encoder computes; a release with others is refused, naming them.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from slmzoo_plugins.importers.transformers_audio import (
    ExportError,
    ExportsToTransformers,
    TransformersAudioImporter,
    audio_encoder_fields,
)

TEKKEN_FILE = "tekken.json"
# mistral-common's instruct layout for Voxtral; a user turn ending in [TRANSCRIBE] is a transcription request,
# whose instruction follows [/INST]. The audio tag and [BEGIN_AUDIO] come from prompt.user_format.
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}"
    "{% if m['content'].endswith('[TRANSCRIBE]') %}{% set parts = m['content'].rsplit('[AUDIO]', 1) %}"
    "[INST]{{ parts[0] }}[AUDIO][/INST]{{ parts[1] }}"
    "{% else %}[INST]{{ m['content'] }}[/INST]{% endif %}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)
#: What the whisper encoder and stack adapter compute: mistral-common's audio settings must say the same.
AUDIO_SETTINGS = {"sampling_rate": 16000, "frame_rate": 12.5, "chunk_length_s": 30.0}
ENCODING_SETTINGS = {"hop_length": 160, "window_size": 400}
#: The card's prompt keys that render mistral-common's layouts (what the importer writes).
MISTRAL_PROMPT = {"chat_template": TEMPLATE, "user_format": "[BEGIN_AUDIO]{audio}{instruction}", "system": None}
#: VoxtralProcessor's hard-coded id of [AUDIO].
AUDIO_TOKEN_ID = 24


class VoxtralImporter(ExportsToTransformers, TransformersAudioImporter):
    reference_class = "VoxtralForConditionalGeneration"
    export_requires = {"encoder": {"type": "whisper", "pad_to_window": True, "window_attention_mask": False,
                                   "pool": 1, "long_clips": "split", "window_output": "window", "layer": "last"},
                       "adapter": {"type": "stack", "k": 4, "activation": "gelu", "norm": "none",
                                   "mid_norm": "none", "bias": False},
                       "fusion": {"type": "concat"}}
    rules = (("model.audio_tower.", "encoder.encoder."),
             ("model.multi_modal_projector.linear_1.", "adapter.linear_1."),
             ("model.multi_modal_projector.linear_2.", "adapter.linear_2."),
             ("model.language_model.", "llm.model.model."), ("lm_head.", "llm.model.lm_head."))

    def card_blocks(self) -> dict[str, dict[str, Any]]:
        from slmzoo.components import config_fields
        from slmzoo_plugins.encoders.whisper import tower_config

        config = self.hf_config()
        if config.projector_hidden_act != "gelu":
            raise self.fail(f"config.json projector_hidden_act {config.projector_hidden_act!r}: the card's "
                            "projector uses gelu")
        # Always TEMPLATE: a Jinja template shipped beside tekken.json is written for content lists, not for the
        # prompt text the card's user_format makes.
        prompt = {"audio_tag": "[AUDIO]", "chat_template": TEMPLATE, "system": None,
                  "user_format": "[BEGIN_AUDIO]{audio}{instruction}", "stop_tokens": self.stop_tokens()}
        return {"encoder": {"pretrained": None, "config": config_fields(tower_config(config, str(self.folder)))},
                "adapter": {"hidden_dim": config.text_config.hidden_size},
                "llm": self.llm_block(config.text_config), "prompt": prompt}

    def tokenizer_dir(self) -> Path:
        """tekken.json converted into transformers' tokenizer files (``tokenizers`` BPE, the control tokens
        special), once per importer; a release that already ships ``tokenizer.json`` is read as it is."""
        if (self.folder / "tokenizer.json").is_file() or not (self.folder / TEKKEN_FILE).is_file():
            return self.folder
        if getattr(self, "_converted", None) is None:
            from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

            tokenizer = convert_tekken_tokenizer(str(self.folder / TEKKEN_FILE), chat_template="")
            tokenizer.vocab_file = None  # transformers' files only: a tekken.json beside them selects mistral-common
            self._converted = Path(tempfile.mkdtemp(prefix="slmzoo-tekken-"))
            tokenizer.save_pretrained(self._converted)
            (self._converted / TEKKEN_FILE).unlink(missing_ok=True)
        return self._converted

    def check(self, model) -> None:
        self.check_whisper_features(model.encoder.config.num_mel_bins)
        self.check_audio_token(model, self.config.get("audio_token_id"))
        file = self.folder / TEKKEN_FILE
        audio = json.loads(file.read_text(encoding="utf-8")).get("audio") if file.is_file() else None
        if audio is None:
            return
        encoding = audio.get("audio_encoding_config", {})
        wanted = {**AUDIO_SETTINGS, "num_mel_bins": model.encoder.config.num_mel_bins, **ENCODING_SETTINGS}
        found = {**{k: audio.get(k) for k in AUDIO_SETTINGS}, **{k: encoding.get(k) for k in wanted
                                                                  if k not in AUDIO_SETTINGS}}
        wrong = [f"{key} {found[key]!r} (the card computes {value!r})" for key, value in wanted.items()
                 if found[key] is not None and float(found[key]) != float(value)]
        if wrong:
            raise self.fail(f"{TEKKEN_FILE} audio: " + "; ".join(wrong))

    # -- export: VoxtralForConditionalGeneration, and a tekken.json for mistral-common ---------------------------
    @classmethod
    def reference_config(cls, model):
        from transformers import VoxtralConfig

        from slmzoo.components import config_fields

        prompt = model.card.data.get("prompt") or {}
        wrong = [key for key, value in MISTRAL_PROMPT.items() if prompt.get(key) != value]
        if wrong:
            raise ExportError(f"{model.card.name}: VoxtralProcessor tokenizes with mistral-common, whose layout the "
                              f"card's prompt.{', prompt.'.join(wrong)} do not render (the voxtral importer writes "
                              "it: export a model fine-tuned from an imported Voxtral release)")
        if model.audio_token_id != AUDIO_TOKEN_ID:
            raise ExportError(f"{model.card.name}: {model.processor.audio_tag} has the id {model.audio_token_id}; "
                              f"VoxtralProcessor hard-codes {AUDIO_TOKEN_ID}")
        return VoxtralConfig(audio_config=audio_encoder_fields(model.encoder.config),
                             text_config=config_fields(model.llm.config), audio_token_id=AUDIO_TOKEN_ID,
                             projector_hidden_act="gelu")

    @classmethod
    def save_processor_files(cls, model, out) -> None:
        """The WhisperFeatureExtractor's settings and ``tekken.json`` (VoxtralProcessor's tokenizer is
        mistral-common's): the transformers tokenizer files are left out, since a folder with both makes
        transformers choose by its own rules."""
        from transformers import WhisperFeatureExtractor

        WhisperFeatureExtractor(feature_size=model.encoder.config.num_mel_bins).save_pretrained(out)
        tekken = tekken_json(model.tokenizer, model.encoder.config.num_mel_bins)
        (out / TEKKEN_FILE).write_text(json.dumps(tekken), encoding="utf-8")
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (out / name).unlink(missing_ok=True)


def tekken_json(tokenizer, num_mel_bins: int) -> dict[str, Any]:
    """``tekken.json`` of a byte-level BPE tokenizer laid out as tekken's (what transformers' converter makes of a
    tekken file: special tokens at ids ``0 .. n-1``, then the BPE vocabulary by rank, the pre-tokenizer's split
    pattern), with Voxtral's audio settings. A tokenizer of another layout is refused, saying why."""
    import base64

    from transformers.convert_slow_tokenizer import bytes_to_unicode

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    splits = [p for p in (state.get("pre_tokenizer") or {}).get("pretokenizers") or [] if p.get("type") == "Split"]
    if state["model"].get("type") != "BPE" or not splits:
        raise ExportError("Voxtral export: the tokenizer is not tekken's (a byte-level BPE with a split pattern, as "
                          "an imported Voxtral release has); mistral-common cannot read it")
    specials = sorted((i, t.content) for i, t in tokenizer.added_tokens_decoder.items())
    if [i for i, _ in specials] != list(range(len(specials))):
        raise ExportError("Voxtral export: the tokenizer's added tokens are not ids 0 .. n-1, as tekken's special "
                          f"tokens are (ids {[i for i, _ in specials][:8]} ...)")
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    ranked = sorted((i, t) for t, i in state["model"]["vocab"].items() if i >= len(specials))
    if [i for i, _ in ranked] != list(range(len(specials), len(specials) + len(ranked))):
        raise ExportError("Voxtral export: the BPE vocabulary does not follow the special tokens without gaps")
    vocab = []
    for i, token in ranked:
        raw = bytes(to_byte[c] for c in token)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None  # tekken's own convention for a byte sequence that is no text on its own
        vocab.append({"rank": i - len(specials), "token_bytes": base64.b64encode(raw).decode(), "token_str": text})
    return {"config": {"pattern": splits[0]["pattern"]["Regex"], "num_vocab_tokens": len(vocab),
                       "default_vocab_size": len(vocab) + len(specials), "default_num_special_tokens": len(specials),
                       "version": "v7"},
            "vocab": vocab,
            "special_tokens": [{"rank": i, "token_str": t, "is_control": True} for i, t in specials],
            "audio": {**AUDIO_SETTINGS, "audio_encoding_config": {"num_mel_bins": num_mel_bins, **ENCODING_SETTINGS}}}
