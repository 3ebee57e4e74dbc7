"""Ultravox v0.5 / v0.6 (fixie-ai, ``UltravoxModel``, remote code) -> the ``ultravox`` card.

The release holds the audio tower and the projector; the LLM (and, before v0.5, the Whisper encoder) come from the
ids its config names, ``text_model_id`` (``audio_model_id``), loaded by the card's own ``pretrained`` (a Hub id is
fetched through the huggingface_hub cache first):

- ``audio_tower.*`` (Ultravox's ModifiedWhisperEncoder, variable length, padding masked) -> the whisper encoder;
- ``multi_modal_projector.{ln_pre, linear_1, ln_mid, linear_2}`` -> the ``stack`` adapter (``stack_factor`` frames,
  RMSNorm, Linear, SwiGLU with the second half the gate, RMSNorm, Linear, no biases), ``ceil(mel frames / 16)``
  embeddings per clip (per 30 s chunk of a longer one) as Ultravox's processor counts them;
- the tokenizer and chat template are the LLM's; Ultravox overwrites its EOS placeholders by position, which
  gives the same sequence as the card's audio tag replaced by the clip.

Read from fixie-ai/ultravox's code, not from released files: the config keys (``text_model_id``,
``audio_model_id``, ``stack_factor``, ``projector_act``, ``projector_ln_mid``) and the tensor names. No runnable
reference offline (remote code; transformers 5 has no Ultravox class, so there is no export either).

Long audio (``UltravoxProcessor._chunk_and_pad_audio``, ``ModifiedWhisperEncoder``, ``UltravoxProjector``):
Ultravox's processor cuts a clip's log-mel into 3000-frame chunks (the last zero-padded to 3000 when
the clip has several), its tower encodes each with the chunk's own attention mask, its projector stacks each
chunk's 1500 output frames by ``stack_factor`` on its own (a chunk's last group holds what the tower computed at
the padded positions, zeros past 1500) and keeps ``ceil(chunk mel frames / 16)`` embeddings of each, which follow
each other in the prompt. The encoder's ``long_clips: split`` with ``window_multiple: stack_factor`` gives exactly
that to the ``stack`` adapter.

Features: Ultravox's processor runs WhisperFeatureExtractor with ``padding="longest", pad_to_multiple_of=160`` over
the clips of one prompt (it takes one text at a time; a training batch collates prompts processed one by one). A
prompt's only clip is zero-padded to whole hops: ``pad_to_hop`` computes exactly that, ``ceil(samples / 160)``
frames. When one prompt holds several clips the processor pads them to the longest, so a shorter clip's last STFT
frames see zeros where they would see the clip's reflection alone; this encoder keeps each clip's features its own
(an output never depends on what it is batched with), which differs there, in the last frame of such a clip.
"""

from __future__ import annotations

from typing import Any

from slmzoo.importing import Importer

PROJECTOR = {"ln_pre.": "norm.", "linear_1.": "linear_1.", "ln_mid.": "mid_norm.", "linear_2.": "linear_2."}


class UltravoxImporter(Importer):
    rules = (("audio_tower.", "encoder.encoder."),
             *((f"multi_modal_projector.{theirs}", f"adapter.{ours}") for theirs, ours in PROJECTOR.items()))

    def has_audio_tower(self) -> bool:
        from slmzoo.saving import WEIGHTS_INDEX_FILE

        index = self.folder / WEIGHTS_INDEX_FILE
        if index.is_file():
            import json

            return any(k.startswith("audio_tower.") for k in json.loads(index.read_text())["weight_map"])
        from safetensors import safe_open

        with safe_open(str(self.folder / "model.safetensors"), framework="pt") as reader:
            return any(k.startswith("audio_tower.") for k in reader.keys())

    def sources(self) -> tuple[str, ...]:
        return ("llm",) if self.has_audio_tower() else ("llm", "encoder")

    def tokenizer_dir(self):
        return self.text_model()

    def text_model(self):
        """``text_model_id`` (a Hub id, as Ultravox writes it, or a folder) as a local folder, weights included:
        the release does not hold the LLM."""
        if getattr(self, "_text_model", None) is None:
            from slmzoo.hub.sources import HubError, named_backbone

            source = self.config.get("text_model_id")
            if not source:
                raise self.fail("config.json names no text_model_id (the LLM Ultravox runs on)")
            try:
                self._text_model = named_backbone(source)
            except HubError as error:
                raise self.fail(f"config.json text_model_id {source!r}: {error}") from None
        return self._text_model

    def card_blocks(self) -> dict[str, dict[str, Any]]:
        from transformers import WhisperConfig

        from slmzoo.components import config_fields

        act, mid = self.config.get("projector_act", "swiglu"), self.config.get("projector_ln_mid", True)
        if act != "swiglu" or not mid:
            raise self.fail(f"config.json projector_act {act!r}, projector_ln_mid {mid!r}: the card's projector is "
                            "v0.5's (swiglu, ln_mid); v0.4's ln_post is not mapped")
        text = self.config.get("text_config") or {}
        hidden = self.config.get("hidden_size", 4096)
        stack = self.config.get("stack_factor", 8)
        encoder: dict[str, Any] = {"pretrained": None, "pad_to_window": False, "pad_to_hop": True,
                                   "long_clips": "split", "window_multiple": stack}
        if self.has_audio_tower():
            tower = WhisperConfig(**{k: v for k, v in (self.config.get("audio_config") or {}).items()
                                     if k not in ("architectures", "model_type", "_name_or_path")})
            encoder["config"] = config_fields(tower)
        else:
            encoder.update(pretrained=self.config.get("audio_model_id"), config=None)
        return {"encoder": encoder,
                "adapter": {"k": stack, "hidden_dim": hidden},
                "llm": {"pretrained": str(self.text_model()), "tokenizer": None, "config": None,
                        "dtype": text.get("dtype") or text.get("torch_dtype") or "bfloat16"},
                "prompt": {"chat_template": None, "system": None}}
