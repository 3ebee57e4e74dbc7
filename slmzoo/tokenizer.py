"""The built-in byte-level tokenizer: 256 byte tokens plus special tokens, built without any file.

It is a real ``PreTrainedTokenizerFast``, so tiny presets run offline through the same code path as
hub tokenizers (chat template, special tokens, batch encoding, decoding).
"""

from __future__ import annotations

BYTES = "bytes"
PAD, EOS = "<|pad|>", "<|endoftext|>"


def byte_level_tokenizer(extra_special_tokens: list[str] | tuple[str, ...] = ()):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_to_char = _bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS)
    specials = [t for t in dict.fromkeys(extra_special_tokens) if t not in (PAD, EOS)]
    if specials:
        tokenizer.add_special_tokens({"additional_special_tokens": specials})
    return tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what ByteLevel pre-tokenization emits)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


WORD_SPECIALS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


def word_level_tokenizer(words):
    """A whitespace word-level tokenizer of ``words`` (ids in sorted order after ``<unk> <s> </s> <pad>``): for a
    small closed vocabulary, such as a synthetic corpus's, where one token per word matters (a duplex text channel
    writes one token per 80 ms frame)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(WORD_SPECIALS.values())}
    for word in sorted(set(words) - set(vocab)):
        vocab[word] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=WORD_SPECIALS["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=core, **WORD_SPECIALS)
