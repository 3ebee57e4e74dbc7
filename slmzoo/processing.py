"""The processor: everything that turns a request into model inputs, without the model.

A :class:`Processor` holds the tokenizer (with the audio tag and the chat format's markers as special tokens), the
chat template, the prompt formatter and the encoder's audio settings (sampling rate, channels). It is built from a
card or a saved model folder alone (:func:`load_processor`), so a server or a data worker can prepare batches
without building the model; the builder hands the same object to the LLM, which uses it rather than owning it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from slmzoo.errors import PretrainedLoadError
from slmzoo.prompting import (
    IGNORE_INDEX,
    Encoded,
    PromptFormatter,
    check_audio_count,
    pad_sequences,
    resolve_chat_template,
)
from slmzoo.registry import EncoderOptionsBase, LanguageModelOptionsBase
from slmzoo.tokenizer import BYTES, byte_level_tokenizer

#: The kinds whose options the processor reads: the audio settings of the first ``encoder`` section, the
#: tokenizer of the first ``llm`` section.
AUDIO_KIND, TEXT_KIND = "encoder", "llm"


@dataclass(frozen=True)
class AudioSettings:
    """What the encoder takes: mono (``channels`` 1) float waveforms at ``sampling_rate``."""

    sampling_rate: int = 16000
    channels: int = 1


class Processor:
    """Tokenizer + chat format + audio tag + prompt formatting + audio settings.

    ``processor(audio, prompts, responses)`` makes the batch ``SpeechLM.forward`` and ``generate`` take;
    ``decode(ids)`` turns generated ids back into text.
    """

    def __init__(self, tokenizer, prompt, end_of_turn: str, audio: AudioSettings = AudioSettings(),
                 builtin_tokenizer: bool = False):
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.formatter = PromptFormatter(tokenizer, prompt, end_of_turn)
        self.audio = audio
        self.builtin_tokenizer = builtin_tokenizer

    # -- what models and fusions read -----------------------------------------------------------------
    @property
    def audio_tag(self) -> str:
        return self.prompt.audio_tag

    @property
    def audio_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.prompt.audio_tag)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def stop_token_ids(self) -> list[int]:
        return self.formatter.stop_token_ids

    @property
    def sampling_rate(self) -> int:
        return self.audio.sampling_rate

    # -- requests -> batches -------------------------------------------------------------------------
    def encode(self, prompt: str | list | None, num_audio: int = 1, response: str | None = None,
               task: str | None = None) -> Encoded:
        """One prompt (text, a chat, or ``None`` for the task's instruction) with ``num_audio`` clips, and the
        response to learn (labels set on it only)."""
        return self.formatter.encode(self.formatter.messages(prompt, num_audio=num_audio, task=task), response)

    def load_audio(self, item, sampling_rate: int | None = None, name: str = "audio"):
        """A path or a 1-D array -> a mono float32 waveform at the encoder's rate (files named in errors)."""
        from slmzoo.audio import as_waveform

        return as_waveform(item, self.sampling_rate, sampling_rate, name=name)

    def collate(self, waves: Sequence, encoded: Sequence[Encoded], padding_side: str = "right",
                labels: bool = True) -> dict[str, Any]:
        """Waveforms and encoded prompts -> ``audio [N, S]``, ``audio_lens [N]``, ``input_ids [B, L]``,
        ``attention_mask [B, L]`` and (``labels``) ``labels [B, L]``, token rows padded on ``padding_side``."""
        import torch

        from slmzoo.audio import pad_waveforms

        audio, audio_lens = pad_waveforms(list(waves))
        rows = [e.input_ids for e in encoded]
        batch = {"audio": audio, "audio_lens": audio_lens,
                 "input_ids": torch.tensor(pad_sequences(rows, self.pad_token_id, padding_side)),
                 "attention_mask": torch.tensor(pad_sequences([[1] * len(r) for r in rows], 0, padding_side))}
        if labels:
            batch["labels"] = torch.tensor(pad_sequences([e.labels for e in encoded], IGNORE_INDEX, padding_side))
        return batch

    def __call__(self, audio: Sequence, prompts: Sequence | None = None, responses: Sequence[str] | None = None,
                 sampling_rate: int | None = None, padding_side: str = "right") -> dict[str, Any]:
        """Tokenize prompts (and responses, for training) and load audio into a model batch.

        ``audio[i]`` is a waveform / path, or a list of them for a prompt with several audio tags.
        ``prompts[i]`` is text, a chat (list of ``{"role", "content"}``), or None for the default task.
        """
        n = len(audio)
        prompts = list(prompts) if prompts is not None else [None] * n
        if len(prompts) != n or (responses is not None and len(responses) != n):
            raise ValueError(f"got {n} audio items, {len(prompts)} prompts"
                             + (f" and {len(responses)} responses" if responses is not None else ""))
        groups = [list(a) if isinstance(a, (list, tuple)) else [a] for a in audio]
        encoded = [self.encode(prompt, len(clips), None if responses is None else responses[i])
                   for i, (prompt, clips) in enumerate(zip(prompts, groups))]
        check_audio_count(encoded, [len(g) for g in groups])
        waves = [self.load_audio(clip, sampling_rate, name=f"audio[{i}]") for i, g in enumerate(groups) for clip in g]
        return self.collate(waves, encoded, padding_side, labels=responses is not None)

    def decode(self, ids) -> list[str]:
        """Generated ids ``[B, N]`` -> text, each row cut at its first stop token."""
        stops = set(self.stop_token_ids)
        texts = []
        for row in ids.tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            texts.append(self.tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
        return texts

    # -- saving and loading ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Tokenizer files into ``directory`` (nothing for the built-in byte tokenizer, which needs no file)."""
        if not self.builtin_tokenizer:
            self.tokenizer.save_pretrained(directory)

    @classmethod
    def from_card(cls, card, meta: bool = False, tokenizer_dir: str | os.PathLike | None = None) -> "Processor":
        """The processor of a resolved card: the tokenizer of its language model, the audio settings of its
        encoder, its prompt settings. ``tokenizer_dir``: a saved model's tokenizer files (they win over the card's
        source). ``meta``: a meta build counts parameters only, so a hub tokenizer that cannot be read is replaced by
        the byte tokenizer."""
        return cls.from_options(_options_of_kind(card, TEXT_KIND), card.prompt,
                                _options_of_kind(card, AUDIO_KIND), meta=meta, tokenizer_dir=tokenizer_dir,
                                section=_section(card, TEXT_KIND))

    @classmethod
    def from_options(cls, text_options=None, prompt=None, audio_options=None, meta: bool = False,
                     tokenizer_dir: str | os.PathLike | None = None, section: str | None = None) -> "Processor":
        """The processor a language model's options (``tokenizer``, its default chat format), the prompt settings
        (default: a card's defaults) and an encoder's options (its sampling rate) imply; a component built on its
        own gets this one."""
        from slmzoo.card.schema import PromptConfig

        prompt = prompt if prompt is not None else PromptConfig()
        chat_format = prompt.chat_template or (
            text_options.default_chat_template if isinstance(text_options, LanguageModelOptionsBase) else None)
        source = text_options.tokenizer_source() if isinstance(text_options, LanguageModelOptionsBase) else None
        if tokenizer_dir is not None and Path(tokenizer_dir).is_dir():
            source = str(tokenizer_dir)
        tokenizer, builtin = _load_tokenizer(source, chat_format, prompt.audio_tag, meta, section)
        template, end_of_turn, specials = resolve_chat_template(chat_format, tokenizer)
        if template is not None:
            tokenizer.chat_template = template
        new_tokens = [t for t in (*specials, prompt.audio_tag) if t not in tokenizer.get_vocab()]
        if new_tokens:
            tokenizer.add_special_tokens({"additional_special_tokens": new_tokens})
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        rate = audio_options.sampling_rate() if isinstance(audio_options, EncoderOptionsBase) else 16000
        return cls(tokenizer, prompt, end_of_turn, AudioSettings(sampling_rate=rate), builtin)


class UsesProcessor:
    """What an object holding a ``processor`` (a model, a language model) exposes of it, for convenience."""

    processor: Processor | None = None

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def formatter(self) -> PromptFormatter:
        return self.processor.formatter

    @property
    def audio_token_id(self) -> int:
        return self.processor.audio_token_id

    @property
    def pad_token_id(self) -> int:
        return self.processor.pad_token_id

    @property
    def sampling_rate(self) -> int:
        return self.processor.sampling_rate


def _section(card, kind: str) -> str | None:
    if card is None:
        return None
    return next((s.name for s in card.spec.sections if s.kind == kind and s.name in card.options), None)


def _options_of_kind(card, kind: str):
    section = _section(card, kind)
    return None if section is None else card.options[section]


def _load_tokenizer(source: str | None, chat_format: str | None, audio_tag: str, meta: bool, section: str | None):
    """``(tokenizer, builtin)``: the byte tokenizer for no source / ``bytes``, else ``AutoTokenizer``."""
    from slmzoo.chat_templates import CHAT_FORMATS

    # The built-in tokenizer has no template of its own, so it gets chatml unless the card names one.
    builtin_format = CHAT_FORMATS.get(chat_format or "chatml")
    specials = [*(builtin_format.special_tokens if builtin_format else ()), audio_tag]
    if source is None or source == BYTES:
        return byte_level_tokenizer(specials), True
    if meta and not Path(source).is_dir():  # a meta build only counts parameters: never reach for the hub
        return byte_level_tokenizer(specials), True
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source), False
    except Exception as error:
        if meta:  # a meta build only counts parameters: any tokenizer will do
            return byte_level_tokenizer(specials), True
        raise PretrainedLoadError(f"{section or 'llm'}.tokenizer: cannot load {source!r} ({error}); offline, use a "
                                 "local folder or tokenizer: bytes (the built-in byte-level tokenizer)") from None


def card_processor(card, meta: bool = False, tokenizer_dir: str | os.PathLike | None = None) -> Processor:
    """The processor of a resolved card, as its architecture makes it (its ``processor`` factory, else
    :meth:`Processor.from_card`): the one place building a model and loading a saved one get it from."""
    factory = card.spec.load_processor_factory() if card.spec is not None else None
    if factory is not None:
        return factory(card, meta=meta, tokenizer_dir=tokenizer_dir)
    return Processor.from_card(card, meta=meta, tokenizer_dir=tokenizer_dir)


def load_processor(source, preset: str | None = None, overrides=None, meta: bool = False) -> Processor:
    """The processor of a card (a name, a path, or a loaded card) or of a saved model (a folder, ``local-dir:PATH``
    or ``hf-hub:org/name[@rev]``), without building (or importing) the model."""
    from slmzoo.card.loader import ResolvedCard, load_card

    if isinstance(source, ResolvedCard):
        return card_processor(source, meta=meta)
    from slmzoo import saving
    from slmzoo.hub.sources import HubSource, parse, processor_folder

    prefixed = parse(source) if isinstance(source, str) else None
    if isinstance(prefixed, HubSource):  # the card and tokenizer files only: no weights are downloaded
        folder = processor_folder(prefixed)
        return card_processor(saving.load_saved_card(folder), tokenizer_dir=folder / saving.TOKENIZER_DIR)
    source = prefixed or source
    if saving.is_saved_model(source):
        if preset or overrides:
            raise ValueError(f"{source} is a saved model: presets and overrides apply to cards only")
        return card_processor(saving.load_saved_card(source), tokenizer_dir=Path(source) / saving.TOKENIZER_DIR)
    return card_processor(load_card(source, preset=preset, overrides=overrides), meta=meta)
