"""LLM specs. Imports no torch; implementations load on build."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from slmzoo import hookimpl
from slmzoo.lora import LoraOptions  # noqa: F401  (re-exported: LLM options use it)
from slmzoo.registry import ComponentSpec, LanguageModelOptionsBase
from slmzoo.tokenizer import BYTES


class HFCausalOptions(LanguageModelOptionsBase):
    """Any Hugging Face causal LM (``AutoModelForCausalLM``)."""

    pretrained: str | None = Field(None, description="Hub id or local folder of the LLM.")
    config: dict[str, Any] | None = Field(
        None, description="Inline config (needs model_type) for random weights; also used by --meta builds."
    )
    tokenizer: str | None = Field(
        None, description="'bytes' for the built-in byte-level tokenizer, or a hub id / folder; default: pretrained."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weight dtype.")
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = Field(
        None, description="transformers attention implementation; default: transformers' choice."
    )
    lora: LoraOptions | None = Field(None, description="LoRA adapters on the LLM; omit for none.")

    def tokenizer_source(self) -> str | None:
        source = self.tokenizer or self.pretrained
        return None if source == BYTES else source


class HFSeq2SeqOptions(HFCausalOptions):
    """Any Hugging Face encoder-decoder LM (``AutoModelForSeq2SeqLM``: T5, Flan-T5); same options as hf_causal.

    The fused prompt goes to the encoder, the response to the decoder. T5's projections are named
    ``q``, ``k``, ``v``, ``o``: LoRA ``target_modules`` must say so. T5 has no chat template: ``plain`` by default.
    """

    default_chat_template: ClassVar[str | None] = "plain"


@hookimpl
def slmzoo_register_components(register):
    register(ComponentSpec(
        kind="llm", name="hf_seq2seq",
        description="Any transformers encoder-decoder LM (T5, Flan-T5): prompt to the encoder, answer to the decoder.",
        options=HFSeq2SeqOptions, factory="slmzoo_plugins.llms.hf_seq2seq:HFSeq2SeqLM",
    ))
    register(ComponentSpec(
        kind="llm", name="hf_causal",
        description="Any transformers causal LM: hub id, local folder or inline config; LoRA via peft.",
        options=HFCausalOptions, factory="slmzoo_plugins.llms.hf_causal:HFCausalLM",
    ))
