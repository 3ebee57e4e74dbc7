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

from slmzoo_plugins.importers.transformers_audio import TransformersAudioImporter

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


class VoxtralImporter(TransformersAudioImporter):
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
