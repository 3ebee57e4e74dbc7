"""``hf_causal``: any transformers causal LM with its tokenizer, chat format and audio tag; LoRA via peft."""

from __future__ import annotations

import warnings

import torch

from slmzoo.chat_templates import CHAT_FORMATS
from slmzoo.components import LanguageModel
from slmzoo.prompting import PromptFormatter, resolve_chat_template
from slmzoo.tokenizer import BYTES, byte_level_tokenizer

# peft calls a transformers method deprecated in v5 on every LoRA build; the warning is not ours to act on.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LLMLoadError(RuntimeError):
    pass


def _load_tokenizer(options, prompt, meta: bool, specials: tuple[str, ...]):
    source = options.tokenizer or options.pretrained
    if source is None or source == BYTES:
        return byte_level_tokenizer([*specials, prompt.audio_tag]), True
    from pathlib import Path

    from transformers import AutoTokenizer

    if meta and not Path(source).is_dir():  # a meta build only counts parameters: never reach for the hub
        return byte_level_tokenizer([*specials, prompt.audio_tag]), True
    try:
        return AutoTokenizer.from_pretrained(source), False
    except Exception as error:
        if meta:  # a meta build only counts parameters: any tokenizer will do
            return byte_level_tokenizer([*specials, prompt.audio_tag]), True
        raise LLMLoadError(f"llm.tokenizer: cannot load {source!r} ({error}); offline, use a local folder or "
                           "tokenizer: bytes (the built-in byte-level tokenizer)") from None


def _config(options, builtin_tokenizer=None):
    """The model config; with the built-in tokenizer its vocabulary size and special ids win, since a hub
    config's ids (GPT-2's 50256, say) mean nothing to the byte tokenizer."""
    from transformers import AutoConfig

    if options.config is not None:
        fields = dict(options.config)
        model_type = fields.pop("model_type", None)
        if model_type is None:
            raise LLMLoadError("llm.config needs model_type (e.g. qwen3, llama, gpt2)")
        if builtin_tokenizer is not None:
            fields.setdefault("vocab_size", len(builtin_tokenizer))
            fields.update(bos_token_id=builtin_tokenizer.bos_token_id, eos_token_id=builtin_tokenizer.eos_token_id,
                          pad_token_id=builtin_tokenizer.pad_token_id)
        return AutoConfig.for_model(model_type, **fields)
    if options.pretrained is None:
        raise LLMLoadError("llm: give pretrained (hub id or folder) or an inline config")
    try:
        return AutoConfig.from_pretrained(options.pretrained)
    except Exception as error:
        raise LLMLoadError(f"llm.pretrained: cannot read the config of {options.pretrained!r} ({error}); "
                           "add an inline llm.config with the published dimensions to build offline") from None


class HFLanguageModel(LanguageModel):
    """What every transformers-backed LLM shares: tokenizer + chat format + audio tag, the model built from
    ``pretrained`` or an inline config, LoRA through peft. Subclasses name their Auto class and peft task."""

    auto_class = "AutoModelForCausalLM"
    peft_task = "CAUSAL_LM"
    default_chat_format: str | None = None  # None: the tokenizer's own template, chatml for the built-in one

    def __init__(self, options, context):
        super().__init__()
        import transformers

        from slmzoo.card.schema import PromptConfig

        prompt = context.card.card.prompt if context.card is not None else PromptConfig()
        chat_format = prompt.chat_template or self.default_chat_format
        # The built-in tokenizer has no template of its own, so it gets chatml unless the card names one.
        builtin_format = CHAT_FORMATS.get(chat_format or "chatml")
        tokenizer, builtin = _load_tokenizer(options, prompt, context.meta,
                                             builtin_format.special_tokens if builtin_format else ())
        template, end_of_turn, specials = resolve_chat_template(chat_format, tokenizer)
        if template is not None:
            tokenizer.chat_template = template
        new_tokens = [t for t in (*specials, prompt.audio_tag) if t not in tokenizer.get_vocab()]
        if new_tokens:
            tokenizer.add_special_tokens({"additional_special_tokens": new_tokens})
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.formatter = PromptFormatter(tokenizer, prompt, end_of_turn)
        self.audio_token_id = tokenizer.convert_tokens_to_ids(prompt.audio_tag)

        auto = getattr(transformers, self.auto_class)
        kwargs = {"dtype": DTYPES[options.dtype]}
        if options.attn_implementation:
            kwargs["attn_implementation"] = options.attn_implementation
        if options.pretrained is not None and not context.from_config:
            try:
                model = auto.from_pretrained(options.pretrained, **kwargs)
            except OSError as error:
                raise LLMLoadError(f"llm.pretrained: cannot load {options.pretrained!r} ({error}); offline, use a "
                                   "local folder, the tiny preset, or --meta") from None
        else:
            model = auto.from_config(self.inline_config(options, tokenizer if builtin else None), **kwargs)
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0] and not context.meta:
            model.resize_token_embeddings(len(tokenizer))
        self.hidden_size = model.config.get_text_config().hidden_size
        if options.lora is not None:
            from peft import get_peft_model

            from slmzoo.lora import check_targets, peft_config

            check_targets(model, options.lora, "llm")
            model = get_peft_model(model, peft_config(options.lora, task_type=self.peft_task))
        self.model = model

    def inline_config(self, options, builtin_tokenizer):
        return _config(options, builtin_tokenizer)

    @property
    def config(self):
        """The transformers config of the LLM (saved into self-contained checkpoints)."""
        return self.base.config

    @property
    def base(self):
        """The underlying transformers model (inside peft's wrapper when LoRA is on)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids [B, L]`` -> ``[B, L, D]``."""
        return self.model.get_input_embeddings()(input_ids)


class HFCausalLM(HFLanguageModel):
    """A transformers ``AutoModelForCausalLM`` plus tokenizer, prompt formatter and audio tag id."""

    def forward(self, inputs_embeds, attention_mask, labels=None, position_ids=None, **extra):
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels,
                          position_ids=position_ids, use_cache=False, **extra)

    def generate(self, inputs_embeds, attention_mask, **generation_kwargs) -> torch.Tensor:
        """Left-padded ``inputs_embeds [B, L, D]`` -> new token ids ``[B, N]`` (KV-cached decoding)."""
        generation_kwargs.setdefault("eos_token_id", self.formatter.stop_token_ids)
        generation_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        return self.model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **generation_kwargs)

