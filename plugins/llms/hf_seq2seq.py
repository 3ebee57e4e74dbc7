"""``hf_seq2seq``: an encoder-decoder LM (T5, Flan-T5) through ``AutoModelForSeq2SeqLM`` (SLM, SpeechVerse).

The fused prompt (audio + instruction) is the encoder's ``inputs_embeds``; the response is the decoder's
``labels`` (transformers shifts them right behind ``decoder_start_token_id``). ``SpeechLM`` splits a
causal-layout batch (prompt and response in one row) into the two, so collators need not know.
T5 has no chat template: the card's format is used, ``plain`` by default (the options' default).
"""

from __future__ import annotations

import torch
from torch import nn

from slmzoo.components import LMOutput
from slmzoo_plugins.llms.hf_causal import HFLanguageModel, cache_arguments, model_config, returned_cache


class HFSeq2SeqLM(HFLanguageModel):
    """A transformers ``AutoModelForSeq2SeqLM``. ``hidden_states`` and ``head`` are the decoder's."""

    is_encoder_decoder = True
    auto_class = "AutoModelForSeq2SeqLM"
    peft_task = "SEQ_2_SEQ_LM"

    def __init__(self, options, context):
        super().__init__(options, context)
        config = self.base.config
        if getattr(config, "decoder_start_token_id", None) is None:
            config.decoder_start_token_id = config.pad_token_id

    def inline_config(self, options, tokenizer, builtin: bool):
        if options.config is None:
            return model_config(None, options.pretrained, tokenizer, builtin)
        # T5 starts decoding from the pad token; take both from the tokenizer
        fields = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                  "decoder_start_token_id": tokenizer.pad_token_id, **options.config}
        return model_config(fields, options.pretrained, tokenizer, builtin)

    def init_random(self, model: nn.Module) -> None:
        """A random T5-family model whose head is the tied embedding without T5's ``d_model ** -0.5`` output rescaling
        (transformers 5 always ties mT5's head and never rescales it) starts its embeddings at ``d_model ** -0.5``,
        not T5's 1.0: at 1.0 the logits start at std ``sqrt(d_model)`` (loss 54 at width 128) and the text embeddings
        are 13x an adapter's output, which the encoder then hardly sees (a tiny slm learned the text prior only)."""
        config = model.config
        tied = model.get_output_embeddings() is not None and \
            model.get_output_embeddings().weight is model.get_input_embeddings().weight
        if tied and not getattr(config, "scale_decoder_outputs", False) and hasattr(config, "d_model"):
            with torch.no_grad():
                model.get_input_embeddings().weight.normal_(0.0, config.d_model ** -0.5)

    def decoder_layers(self) -> nn.ModuleList:
        decoder = self.base.get_decoder()
        for name in ("block", "layers"):
            if isinstance(getattr(decoder, name, None), nn.ModuleList):
                return getattr(decoder, name)
        raise ValueError(f"cannot find the decoder layers of {type(self.base).__name__}")

    def hidden_states(self, inputs_embeds, attention_mask, position_ids=None, past_key_values=None,
                      use_cache=False, decoder_input_ids=None, labels=None, encoder_hidden_states=None):
        """The decoder's last states ``[B, N, D]`` for the encoder input ``inputs_embeds [B, L, D]`` (or its
        ``encoder_hidden_states``, computed once when decoding step by step); decoder input ``decoder_input_ids
        [B, N]`` or ``labels`` shifted right behind the start token."""
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("an encoder-decoder LM needs decoder_input_ids or labels for its decoder states")
            decoder_input_ids = self.base.prepare_decoder_input_ids_from_labels(labels=labels)
        if encoder_hidden_states is None:
            encoder_hidden_states = self.base.get_encoder()(inputs_embeds=inputs_embeds,
                                                            attention_mask=attention_mask).last_hidden_state
        decoder = self.base.get_decoder()
        out = decoder(input_ids=decoder_input_ids, encoder_hidden_states=encoder_hidden_states,
                      encoder_attention_mask=attention_mask, use_cache=use_cache,
                      **cache_arguments(decoder, past_key_values))
        return out.last_hidden_state, (returned_cache(out) if use_cache else None)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        config = self.base.config
        if getattr(config, "scale_decoder_outputs", False):  # T5 with tied embeddings
            hidden = hidden * (config.d_model ** -0.5)
        return self.base.get_output_embeddings()(hidden)

    def forward(self, inputs_embeds, attention_mask, labels=None, **extra) -> LMOutput:
        """Encoder ``inputs_embeds [B, L, D]`` with ``attention_mask [B, L]``; decoder ``labels [B, N]``
        (-100 where no loss is taken): logits ``[B, N, V]``, loss over the response tokens."""
        extra.pop("position_ids", None)  # relative position biases: the encoder takes no position ids
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels,
                         use_cache=False, **extra)
        return LMOutput(loss=out.loss, logits=out.logits)

    def generate(self, inputs_embeds, attention_mask, **generation_kwargs) -> torch.Tensor:
        """Encoder ``inputs_embeds [B, L, D]`` -> new token ids ``[B, N]`` (the decoder start token dropped)."""
        generation_kwargs.setdefault("eos_token_id", self.processor.stop_token_ids)
        generation_kwargs.setdefault("pad_token_id", self.processor.pad_token_id)
        generation_kwargs.setdefault("decoder_start_token_id", self.base.config.decoder_start_token_id)
        ids = self.model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **generation_kwargs)
        return ids[:, 1:]
