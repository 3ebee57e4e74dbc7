"""Turning prompts and responses into token ids and labels, with the card's chat format and audio tag.

NeMo SALM's convention: each audio replaces one audio tag of the rendered chat, in order. A plain-text
prompt without a tag gets one through ``prompt.user_format``; a chat (list of messages) is used as given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from slmzoo.chat_templates import CHAT_FORMATS

IGNORE_INDEX = -100
Messages = list[dict[str, str]]


class PromptError(ValueError):
    pass


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    num_audio_tags: int


class PromptFormatter:
    """Renders chats with the LLM's tokenizer; ``end_of_turn`` ends every assistant answer."""

    def __init__(self, tokenizer, prompt_config, end_of_turn: str):
        self.tokenizer = tokenizer
        self.config = prompt_config
        self.audio_tag = prompt_config.audio_tag
        self.end_of_turn = end_of_turn

    @property
    def stop_token_ids(self) -> list[int]:
        ids = {self.tokenizer.convert_tokens_to_ids(t) for t in (self.end_of_turn, *self.config.stop_tokens)}
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return sorted(i for i in ids if i is not None and i != self.tokenizer.unk_token_id)

    def messages(self, prompt: str | Messages | None, num_audio: int = 1, task: str | None = None) -> Messages:
        """A user prompt (text, a chat, or None for the default task's instruction) as chat messages."""
        if isinstance(prompt, (list, tuple)):
            messages = [dict(m) for m in prompt]
        else:
            if prompt is None:
                task = task or self.config.default_task
                if task not in self.config.tasks:
                    raise PromptError(f"unknown task {task!r}; the card's prompt.tasks has: {', '.join(self.config.tasks)}")
                prompt = self.config.tasks[task]
            content = prompt
            if self.audio_tag not in prompt:
                tags = self.audio_tag * num_audio if num_audio else ""
                content = self.config.user_format.format(instruction=prompt, audio=tags).strip()
            messages = [{"role": "user", "content": content}]
        if self.config.system and not any(m.get("role") == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": self.config.system})
        return messages

    def with_context(self, instruction: str, context: str | None) -> str:
        """``instruction`` with a request's ``context`` (earlier text, spellings, a style to follow) placed as the
        card's ``prompt.context_format`` says; the instruction alone when the context is empty."""
        context = (context or "").strip()
        if not context:
            return instruction
        return self.config.context_format.format(instruction=instruction, context=context)

    def encode(self, messages: Messages, response: str | None = None) -> Encoded:
        """Token ids of the chat up to the assistant's turn, plus the response (labels only there)."""
        if messages and messages[-1].get("role") == "assistant":
            raise PromptError("the chat ends with an assistant turn; pass it as the response instead")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = self.tokenizer(text, add_special_tokens=False).input_ids
        tags = text.count(self.audio_tag)
        if response is None:
            return Encoded(prompt_ids, [IGNORE_INDEX] * len(prompt_ids), tags)
        answer_ids = self.tokenizer(response + self.end_of_turn, add_special_tokens=False).input_ids
        return Encoded(prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids, tags)


def resolve_chat_template(name_or_template: str | None, tokenizer) -> tuple[str | None, str, tuple[str, ...]]:
    """``(template, end_of_turn, special_tokens)`` for a card's ``prompt.chat_template``.

    ``None`` keeps the tokenizer's own template (its EOS ends a turn) or, if it has none, uses chatml.
    """
    if name_or_template is None:
        own = getattr(tokenizer, "chat_template", None)
        if own:
            return None, tokenizer.eos_token, ()
        name_or_template = "chatml"
    if name_or_template in CHAT_FORMATS:
        fmt = CHAT_FORMATS[name_or_template]
        return fmt.template, fmt.end_of_turn, fmt.special_tokens
    if "{%" in name_or_template or "{{" in name_or_template:
        return name_or_template, tokenizer.eos_token, ()
    raise PromptError(f"prompt.chat_template {name_or_template!r} is neither a built-in format "
                      f"({', '.join(CHAT_FORMATS)}) nor a Jinja template")


def check_audio_count(encoded: Sequence[Encoded], audio_counts: Sequence[int]) -> None:
    for i, (enc, count) in enumerate(zip(encoded, audio_counts)):
        if enc.num_audio_tags != count:
            raise PromptError(f"item {i}: the prompt has {enc.num_audio_tags} audio tag(s) but {count} audio "
                              "segment(s) were given; each audio replaces one tag, in order")


def pad_sequences(rows: Sequence[Sequence[int]], value: int, side: str = "right") -> list[list[int]]:
    width = max((len(r) for r in rows), default=0)
    if side == "left":
        return [[value] * (width - len(r)) + list(r) for r in rows]
    return [list(r) + [value] * (width - len(r)) for r in rows]


def as_list(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]
