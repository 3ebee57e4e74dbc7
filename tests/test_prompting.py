"""Chat formats, audio tags and label masking with the built-in byte tokenizer."""

import pytest

from slmzoo.card.schema import PromptConfig
from slmzoo.chat_templates import CHAT_FORMATS
from slmzoo.prompting import IGNORE_INDEX, PromptError, PromptFormatter, check_audio_count, resolve_chat_template
from slmzoo.tokenizer import byte_level_tokenizer


def formatter(fmt="chatml", **prompt):
    config = PromptConfig(chat_template=fmt, **prompt)
    spec = CHAT_FORMATS[fmt]
    tok = byte_level_tokenizer([*spec.special_tokens, config.audio_tag])
    template, eot, _ = resolve_chat_template(fmt, tok)
    tok.chat_template = template
    return PromptFormatter(tok, config, eot)


def test_byte_tokenizer_round_trips_text_and_keeps_specials_whole():
    tok = byte_level_tokenizer(["<|audio|>"])
    ids = tok("zéro <|audio|>", add_special_tokens=False).input_ids
    assert ids.count(tok.convert_tokens_to_ids("<|audio|>")) == 1
    assert len(ids) == len("zéro ".encode()) + 1  # one token per byte, the tag is one token
    assert tok.decode(ids) == "zéro <|audio|>"


def test_plain_prompt_gets_one_tag_per_audio_and_labels_cover_only_the_answer():
    f = formatter(user_format="{instruction} {audio}")
    enc = f.encode(f.messages("Transcribe.", num_audio=2), response="one two")
    text = f.tokenizer.decode(enc.input_ids)
    assert text == "<|im_start|>user\nTranscribe. <|audio|><|audio|><|im_end|>\n<|im_start|>assistant\none two<|im_end|>"
    assert enc.num_audio_tags == 2
    answer = [t for t in enc.labels if t != IGNORE_INDEX]
    assert f.tokenizer.decode(answer) == "one two<|im_end|>"
    assert enc.labels[: len(enc.labels) - len(answer)] == [IGNORE_INDEX] * (len(enc.labels) - len(answer))


def test_multi_turn_chat_is_used_as_given_and_counted():
    f = formatter()
    chat = [{"role": "user", "content": "First <|audio|>"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "Compare with <|audio|>"}]
    enc = f.encode(f.messages(chat))
    assert enc.num_audio_tags == 2
    with pytest.raises(PromptError, match="2 audio tag\\(s\\) but 1 audio"):
        check_audio_count([enc], [1])


def test_system_prompt_and_default_task():
    f = formatter(system="Be brief.", tasks={"asr": "Write what is said."})
    messages = f.messages(None)
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert "Write what is said." in messages[1]["content"]
    with pytest.raises(PromptError, match="unknown task 'st'"):
        f.messages(None, task="st")


@pytest.mark.parametrize("fmt,expected", [
    ("llama3", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi <|audio|><|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    ("vicuna", "USER: Hi <|audio|> ASSISTANT:"),
    ("plain", "Hi <|audio|>\n"),
])
def test_builtin_formats_render(fmt, expected):
    f = formatter(fmt)
    enc = f.encode(f.messages("Hi"))
    assert f.tokenizer.decode(enc.input_ids) == expected


def test_llama2_system_block():
    f = formatter("llama2", system="SYS")
    enc = f.encode(f.messages("Hi"), response="yo")
    assert f.tokenizer.decode(enc.input_ids) == "<s>[INST] <<SYS>>\nSYS\n<</SYS>>\n\nHi <|audio|> [/INST] yo</s>"


def test_unknown_template_name_is_refused():
    with pytest.raises(PromptError, match="neither a built-in format"):
        resolve_chat_template("chatmlx", byte_level_tokenizer())


def test_a_requests_context_joins_the_instruction_as_the_card_says():
    f = formatter(user_format="{instruction} {audio}")
    assert f.with_context("Transcribe.", "  ") == "Transcribe." and f.with_context("Transcribe.", None) == "Transcribe."
    ids = f.encode(f.messages(f.with_context("Transcribe.", "six {0} six"), num_audio=1)).input_ids
    assert f.tokenizer.decode(ids).startswith("<|im_start|>user\nTranscribe. Context: six {0} six <|audio|>")
    own = formatter(user_format="{audio}{instruction}", context_format="Earlier: {context}\n{instruction}")
    assert own.with_context("Transcribe.", "one two") == "Earlier: one two\nTranscribe."
    for bad, message in (("{instruction} {ctx}", "only the placeholders"), ("{instruction}", "add {context}")):
        with pytest.raises(ValueError, match=message):
            PromptConfig(context_format=bad)
