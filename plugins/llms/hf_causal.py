"""``hf_causal``: any transformers causal LM, implementing the language-model contract; LoRA via peft.

The tokenizer, chat format and audio tag come from the processor the builder passes in ``context.processor``;
this module only builds the model (from ``pretrained`` or an inline config) and exposes its parts: the input
embeddings, the decoder layers, the backbone's hidden states and the output head. Nothing outside the LLM
plugins touches transformers' model internals.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from slmzoo.components import LanguageModel, LMOutput
from slmzoo.errors import PretrainedLoadError, SequenceTooLongError

# peft calls a transformers method deprecated in v5 on every LoRA build; the warning is not ours to act on.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Model types whose positions are a learned table, and the config field sizing it: an input past its end fails as an
# IndexError deep in torch ("index out of range in self"), so the length is checked first. Rotary and relative
# position models have no table and run past their trained length.
LEARNED_POSITIONS = {"gpt2": "n_positions", "opt": "max_position_embeddings", "biogpt": "max_position_embeddings",
                     "gpt_neo": "max_position_embeddings", "xglm": "max_position_embeddings"}


def cache_arguments(module: nn.Module, cache) -> dict:
    """The KV cache as ``module.forward`` names it: ``cache`` (transformers 5.24 on), else ``past_key_values``."""
    import inspect

    name = "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"
    return {name: cache}


def returned_cache(output):
    return getattr(output, "cache", None) if hasattr(output, "cache") else getattr(output, "past_key_values", None)


def model_config(config: dict | None, pretrained: str | None, tokenizer=None, builtin: bool = False):
    """The transformers config: the inline ``config`` (needs ``model_type``) or the checkpoint's. An inline config
    without ``vocab_size`` is sized to the card's ``tokenizer`` (not to the model type's default: a llama config
    would otherwise carry 32000 rows for a 21-word tokenizer, 97% of a tiny model's weights and most of its step).
    With the built-in tokenizer its special ids win too, since a hub config's ids (GPT-2's 50256, say) mean nothing
    to the byte tokenizer."""
    from transformers import AutoConfig

    if config is not None:
        fields = dict(config)
        model_type = fields.pop("model_type", None)
        if model_type is None:
            raise PretrainedLoadError("llm.config needs model_type (e.g. qwen3, llama, gpt2)")
        if tokenizer is not None:
            fields.setdefault("vocab_size", len(tokenizer))
        if builtin:
            fields.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
        return AutoConfig.for_model(model_type, **fields)
    if pretrained is None:
        raise PretrainedLoadError("llm: give pretrained (hub id or folder) or an inline config")
    try:
        return AutoConfig.from_pretrained(pretrained)
    except Exception as error:
        raise PretrainedLoadError(f"llm.pretrained: cannot read the config of {pretrained!r} ({error}); "
                                  "add an inline llm.config with the published dimensions to build offline") from None


class HFLanguageModel(LanguageModel):
    """What every transformers-backed LLM shares: the model built from ``pretrained`` or an inline config, sized
    to the processor's tokenizer, LoRA through peft. Subclasses name their Auto class and peft task."""

    auto_class = "AutoModelForCausalLM"
    peft_task = "CAUSAL_LM"
    applies_own_lora = True  # peft's task wrapper, not the builder's generic injection

    def __init__(self, options, context):
        super().__init__()
        import transformers

        if context.processor is None:  # built on its own (tests, notebooks): the processor its options imply
            from slmzoo.processing import Processor

            context.processor = Processor.from_options(options, meta=context.meta)
        self.processor = processor = context.processor
        tokenizer = processor.tokenizer
        auto = getattr(transformers, self.auto_class)
        kwargs = {"dtype": DTYPES[options.dtype]}
        if options.attn_implementation:
            kwargs["attn_implementation"] = options.attn_implementation
        if options.pretrained is not None and not context.from_config:
            try:
                model = auto.from_pretrained(options.pretrained, **kwargs)
            except OSError as error:
                raise PretrainedLoadError(f"llm.pretrained: cannot load {options.pretrained!r} ({error}); offline, "
                                          "use a local folder, the tiny preset, or --meta") from None
        else:
            config = self.inline_config(options, tokenizer, processor.builtin_tokenizer)
            model = auto.from_config(config, **kwargs)
            if not context.meta:
                self.init_random(model)
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0] and not context.meta:
            model.resize_token_embeddings(len(tokenizer))
        self.hidden_size = model.config.get_text_config().hidden_size
        if options.lora is not None:
            from peft import get_peft_model

            from slmzoo.lora import check_targets, peft_config

            check_targets(model, options.lora, "llm")
            model = get_peft_model(model, peft_config(options.lora, task_type=self.peft_task))
        self.model = model
        self.audio_gate = None
        if options.lora is not None and options.lora.audio_only:
            from slmzoo.lora import RowGate

            self.audio_gate = RowGate(model)

    def position_table(self) -> tuple[str, int] | None:
        """The config field sizing the model's learned position table (:data:`LEARNED_POSITIONS`) and its size;
        ``None``: no table."""
        config = self.base.config.get_text_config()
        field = LEARNED_POSITIONS.get(config.model_type)
        size = getattr(config, field, None) if field else None
        return (field, size) if size is not None else None

    def check_length(self, length: int, what: str = "the LLM input") -> None:
        """``length`` positions must fit the learned position table, if the model has one."""
        table = self.position_table()
        if table is not None and length > table[1]:
            field, limit = table
            model_type = self.base.config.get_text_config().model_type
            raise SequenceTooLongError(
                f"{what} is {length} positions (prompt, audio embeddings and answer), over the {limit} learned "
                f"positions of this {model_type} (llm.config.{field}): use shorter audio or text, fewer "
                f"audio tokens per second, or raise llm.config.{field} (a pretrained table cannot grow)")

    def init_random(self, model: nn.Module) -> None:
        """Adjust transformers' initialisation of a model built from its config (random weights); none here."""

    def with_audio(self, rows):
        if self.audio_gate is None:
            return super().with_audio(rows)
        return self.audio_gate.rows(rows)

    def inline_config(self, options, tokenizer, builtin: bool):
        return model_config(options.config, options.pretrained, tokenizer, builtin)

    @property
    def config(self):
        """The transformers config of the LLM (saved into self-contained checkpoints)."""
        return self.base.config

    @property
    def base(self):
        """The underlying transformers model (inside peft's wrapper when LoRA is on)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    # -- the contract -----------------------------------------------------------------------------------
    def input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def decoder_layers(self) -> nn.ModuleList:
        """The transformer blocks: the ``ModuleList`` of ``num_hidden_layers`` modules (the decoder's)."""
        base = self.base
        num = base.config.get_text_config().num_hidden_layers
        for module in base.modules():
            if isinstance(module, nn.ModuleList) and len(module) == num:
                return module
        raise ValueError(f"cannot find the {num} decoder layers of {type(base).__name__}")

    def hidden_states(self, inputs_embeds, attention_mask, position_ids=None, past_key_values=None,
                      use_cache=False):
        """The backbone (``base_model``, final norm included): ``[B, L, D]`` and the cache."""
        backbone = self.base.base_model
        self.check_length(attention_mask.shape[1] if attention_mask is not None else inputs_embeds.shape[1])
        out = backbone(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=use_cache, **cache_arguments(backbone, past_key_values))
        return out.last_hidden_state, (returned_cache(out) if use_cache else None)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output projection plus what the model's own forward does to logits (Granite divides them by
        ``logits_scaling``, Gemma 2/3 soft-cap them, Cohere multiplies them by ``logit_scale``)."""
        config = self.base.config.get_text_config()
        logits = self.base.get_output_embeddings()(hidden)
        if getattr(config, "logits_scaling", None):
            logits = logits / config.logits_scaling
        if config.model_type.startswith("cohere") and getattr(config, "logit_scale", None):
            logits = logits * config.logit_scale
        if getattr(config, "final_logit_softcapping", None):
            cap = config.final_logit_softcapping
            logits = torch.tanh(logits / cap) * cap
        return logits

    def rotate_queries(self, attention: nn.Module, queries: torch.Tensor, position_embeddings) -> torch.Tensor:
        """Rotary models (Llama, Mistral, Qwen, Gemma) rotate queries with their modeling file's
        ``apply_rotary_pos_emb`` and the ``(cos, sin)`` each layer receives."""
        import sys

        rotate = getattr(sys.modules[type(attention).__module__], "apply_rotary_pos_emb", None)
        if position_embeddings is None or rotate is None:
            return queries
        cos, sin = position_embeddings
        return rotate(queries, queries, cos, sin)[0]

    def gradient_checkpointing_enable(self) -> bool:
        for method in ("activation_checkpointing_enable", "gradient_checkpointing_enable"):  # new name first
            if hasattr(self.base, method):
                getattr(self.base, method)()
                return True
        return False


class HFCausalLM(HFLanguageModel):
    """A transformers ``AutoModelForCausalLM``; forward and generate are transformers' own."""

    def forward(self, inputs_embeds, attention_mask, labels=None, position_ids=None, **extra) -> LMOutput:
        self.check_length(inputs_embeds.shape[1])
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels,
                         position_ids=position_ids, use_cache=False, **extra)
        return LMOutput(loss=out.loss, logits=out.logits)

    def generate(self, inputs_embeds, attention_mask, **generation_kwargs) -> torch.Tensor:
        """Left-padded ``inputs_embeds [B, L, D]`` -> new token ids ``[B, N]`` (KV-cached decoding)."""
        generation_kwargs.setdefault("eos_token_id", self.processor.stop_token_ids)
        generation_kwargs.setdefault("pad_token_id", self.processor.pad_token_id)
        self.check_length(inputs_embeds.shape[1], "the prompt")
        table = self.position_table()
        if table is not None and generation_kwargs.get("max_new_tokens") is not None:
            # no answer can run past the table (the last token is never fed back, hence the + 1)
            generation_kwargs["max_new_tokens"] = min(generation_kwargs["max_new_tokens"],
                                                      table[1] - inputs_embeds.shape[1] + 1)
        return self.model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **generation_kwargs)
