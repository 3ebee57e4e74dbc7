"""The duplex processor: the card's tokenizer with a BOS token (the text channel opens every agent turn with one).

Torch-free (``load_processor`` builds no model); used when a model is built and when a saved one is loaded, so a
tokenizer that needs the token added (the built-in byte tokenizer saves no files) gets it both times.
"""

from __future__ import annotations

BOS_TOKEN = "<|startoftext|>"


def bos_token(tokenizer, settings) -> str:
    """The duplex card's ``bos_token``, else the tokenizer's BOS, else :data:`BOS_TOKEN`."""
    return settings.bos_token or tokenizer.bos_token or BOS_TOKEN


def duplex_processor(card, meta: bool = False, tokenizer_dir=None):
    from slmzoo.processing import Processor

    processor = Processor.from_card(card, meta=meta, tokenizer_dir=tokenizer_dir)
    tokenizer = processor.tokenizer
    bos = bos_token(tokenizer, card.validated.duplex)
    if bos not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [bos]})
    return processor
