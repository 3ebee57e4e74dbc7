"""Built-in chat formats a card can name in ``prompt.chat_template`` (or give its own Jinja template).

Each format names the tokens that end an assistant turn (generation stops there, training learns to
emit it) and the marker strings that must be single special tokens in the built-in byte tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatFormat:
    template: str
    end_of_turn: str
    special_tokens: tuple[str, ...]


_SYSTEM_FIRST = "{% set loop_messages = messages %}"

CHAT_FORMATS: dict[str, ChatFormat] = {
    "chatml": ChatFormat(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        "<|im_end|>", ("<|im_start|>", "<|im_end|>"),
    ),
    "llama3": ChatFormat(
        "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
        "<|eot_id|>", ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
    # Llama 2 chat (AudioChatLlama, WavLLM, LLaSM): <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {answer} </s>
    "llama2": ChatFormat(
        "{% for m in messages %}"
        "{% if m['role'] == 'system' %}{% set ns_sys = m['content'] %}"
        "{% elif m['role'] == 'user' %}<s>[INST] {% if loop.index0 == 1 and messages[0]['role'] == 'system' %}"
        "<<SYS>>\n{{ messages[0]['content'] }}\n<</SYS>>\n\n{% endif %}{{ m['content'] }} [/INST]"
        "{% else %} {{ m['content'] }} </s>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %} {% endif %}",
        "</s>", ("<s>", "</s>"),
    ),
    # Vicuna v1.1 (SALMONN): {system} USER: {user} ASSISTANT: {answer}</s>
    "vicuna": ChatFormat(
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }} "
        "{% elif m['role'] == 'user' %}USER: {{ m['content'] }} ASSISTANT:"
        "{% else %} {{ m['content'] }}</s>{% endif %}{% endfor %}",
        "</s>", ("</s>",),
    ),
    # No chat markup (base LMs, Pengi, SLM): the prompt, a newline, the answer.
    "plain": ChatFormat(
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] }}<|endoftext|>"
        "{% else %}{{ m['content'] }}\n{% endif %}{% endfor %}",
        "<|endoftext|>", ("<|endoftext|>",),
    ),
}
