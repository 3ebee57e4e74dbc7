"""``hf_seq2seq``: an encoder-decoder LM (T5, Flan-T5) through ``AutoModelForSeq2SeqLM`` (SLM, SpeechVerse).

The fused prompt (audio + instruction) is the encoder's ``inputs_embeds``; the response is the decoder's
``labels`` (transformers shifts them right behind ``decoder_start_token_id``). ``SpeechLM`` splits a
causal-layout batch (prompt and response in one row) into the two, so collators need not know.
T5 has no chat template: the card's format is used, ``plain`` by default.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from slmzoo_plugins.llms.hf_causal import HFLanguageModel, _config


class HFSeq2SeqLM(HFLanguageModel):
    """A transformers ``AutoModelForSeq2SeqLM`` plus tokenizer, prompt formatter and audio tag id."""

    is_encoder_decoder = True
    auto_class = "AutoModelForSeq2SeqLM"
    peft_task = "SEQ_2_SEQ_LM"
    default_chat_format = "plain"

    def __init__(self, options, context):
        super().__init__(options, context)
        config = self.base.config
        if getattr(config, "decoder_start_token_id", None) is None:
            config.decoder_start_token_id = config.pad_token_id

    def inline_config(self, options, builtin_tokenizer):
        if options.config is None:
            return _config(options, builtin_tokenizer)
        tokenizer = self.tokenizer  # T5 starts decoding from the pad token; take both from the tokenizer
        fields = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                  "decoder_start_token_id": tokenizer.pad_token_id, **options.config}
        return _config(SimpleNamespace(config=fields, pretrained=options.pretrained), builtin_tokenizer)

    def forward(self, inputs_embeds, attention_mask, labels=None, **extra):
        """Encoder ``inputs_embeds [B, L, D]`` with ``attention_mask [B, L]``; decoder ``labels [B, N]``
        (-100 where no loss is taken): logits ``[B, N, V]``, loss over the response tokens."""
        extra.pop("position_ids", None)  # relative position biases: the encoder takes no position ids
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels,
                          use_cache=False, **extra)

    def generate(self, inputs_embeds, attention_mask, **generation_kwargs) -> torch.Tensor:
        """Encoder ``inputs_embeds [B, L, D]`` -> new token ids ``[B, N]`` (the decoder start token dropped)."""
        generation_kwargs.setdefault("eos_token_id", self.formatter.stop_token_ids)
        generation_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        generation_kwargs.setdefault("decoder_start_token_id", self.base.config.decoder_start_token_id)
        ids = self.model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **generation_kwargs)
        return ids[:, 1:]
