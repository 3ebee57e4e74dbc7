"""``hf_seq2seq``: an encoder-decoder LM (T5, Flan-T5) through ``AutoModelForSeq2SeqLM`` (SLM, SpeechVerse).

The fused prompt (audio + instruction) is the encoder's ``inputs_embeds``; the response is the decoder's
``labels`` (transformers shifts them right behind ``decoder_start_token_id``). ``SpeechLM`` splits a
causal-layout batch (prompt and response in one row) into the two, so collators need not know.
T5 has no chat template: the card's format is used, ``plain`` by default.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from slmzoo.chat_templates import CHAT_FORMATS
from slmzoo.components import LanguageModel
from slmzoo.prompting import PromptFormatter, resolve_chat_template
from slmzoo_plugins.llms.hf_causal import DTYPES, LLMLoadError, _config, _load_tokenizer


class HFSeq2SeqLM(LanguageModel):
    """A transformers ``AutoModelForSeq2SeqLM`` plus tokenizer, prompt formatter and audio tag id."""

    is_encoder_decoder = True

    def __init__(self, options, context):
        super().__init__()
        from transformers import AutoModelForSeq2SeqLM

        from slmzoo.card.schema import PromptConfig

        prompt = context.card.card.prompt if context.card is not None else PromptConfig()
        chat_format = prompt.chat_template or "plain"
        builtin_format = CHAT_FORMATS.get(chat_format)
        tokenizer, builtin = _load_tokenizer(options, prompt, context.meta,
                                             builtin_format.special_tokens if builtin_format else ())
        template, end_of_turn, specials = resolve_chat_template(chat_format, tokenizer)
        tokenizer.chat_template = template
        new_tokens = [t for t in (*specials, prompt.audio_tag) if t not in tokenizer.get_vocab()]
        if new_tokens:
            tokenizer.add_special_tokens({"additional_special_tokens": new_tokens})
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.formatter = PromptFormatter(tokenizer, prompt, end_of_turn)
        self.audio_token_id = tokenizer.convert_tokens_to_ids(prompt.audio_tag)

        kwargs = {"dtype": DTYPES[options.dtype]}
        if options.attn_implementation:
            kwargs["attn_implementation"] = options.attn_implementation
        if options.pretrained is not None and not context.from_config:
            try:
                model = AutoModelForSeq2SeqLM.from_pretrained(options.pretrained, **kwargs)
            except OSError as error:
                raise LLMLoadError(f"llm.pretrained: cannot load {options.pretrained!r} ({error}); offline, use a "
                                   "local folder, the tiny preset, or --meta") from None
        else:
            inline = options
            if options.config is not None:  # T5 starts decoding from the pad token; take both from the tokenizer
                fields = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                          "decoder_start_token_id": tokenizer.pad_token_id, **options.config}
                inline = SimpleNamespace(config=fields, pretrained=options.pretrained)
            model = AutoModelForSeq2SeqLM.from_config(_config(inline, tokenizer if builtin else None), **kwargs)
        if getattr(model.config, "decoder_start_token_id", None) is None:
            model.config.decoder_start_token_id = model.config.pad_token_id
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0] and not context.meta:
            model.resize_token_embeddings(len(tokenizer))
        self.hidden_size = model.config.get_text_config().hidden_size  # T5 maps hidden_size to d_model
        if options.lora is not None:
            model = self._add_lora(model, options.lora)
        self.model = model

    @staticmethod
    def _add_lora(model, lora):
        from peft import get_peft_model

        from slmzoo.lora import check_targets, peft_config

        check_targets(model, lora, "llm")
        return get_peft_model(model, peft_config(lora, task_type="SEQ_2_SEQ_LM"))

    @property
    def base(self):
        """The underlying transformers model (inside peft's wrapper when LoRA is on)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids [B, L]`` -> ``[B, L, D]`` (the shared encoder/decoder token embeddings)."""
        return self.model.get_input_embeddings()(input_ids)

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
