"""Fusion specs. Imports no torch; implementations load on build."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slmzoo import hookimpl
from slmzoo.registry import ComponentOptions, ComponentSpec


class ConcatOptions(ComponentOptions):
    """Audio embeddings replace the audio tag in the token embeddings (SALM, Qwen-Audio, LLaSM)."""


class PrefixOptions(ComponentOptions):
    """All of a row's audio embeddings go before its text prompt (Pengi); the audio tags are removed."""


class CrossAttentionOptions(ComponentOptions):
    """Token embeddings attend to the audio in a small cross-attention stack before the LLM (BESTOW)."""

    num_layers: int = Field(2, ge=1, description="Cross-attention blocks in the stack.")
    num_heads: int = Field(8, ge=1, description="Attention heads (must divide the LLM width).")
    ffn_mult: int = Field(4, ge=1, description="Feed-forward width as a multiple of the LLM width.")
    self_attention: bool = Field(
        False, description="Causal self-attention among the text tokens in every block, as BESTOW's transformer "
                           "decoder has: a token's query then knows where it is in the text (beam search unsupported).")


class GatedXAttnOptions(ComponentOptions):
    """Tanh-gated cross-attention blocks interleaved with the LLM layers (Flamingo, Audio Flamingo)."""

    every: int = Field(1, ge=1, description="A gated block before every N-th LLM layer (layers 0, N, 2N, ...).")
    num_heads: int = Field(8, ge=1, description="Attention heads (must divide the LLM width).")
    ffn_mult: int = Field(4, ge=1, description="Feed-forward width as a multiple of the LLM width.")
    zero_init: Literal["gates", "outputs"] = Field(
        "gates", description="What starts at zero so the untrained model is the text LLM: the tanh gates (Flamingo), "
                             "or the blocks' output projections with the gates at 1 (learns faster from scratch).")


class TokenSpaceOptions(ComponentOptions):
    """Discrete audio units as new vocabulary tokens; the new embedding rows are trainable."""

    num_units: int | None = Field(
        None, ge=1, description="Units added to the vocabulary; default: the adapter's num_units / codebook_size."
    )
    output_units: bool = Field(
        False, description="The LM head predicts the unit tokens too (output rows tied to the unit embeddings when "
        "the LLM ties its own), so the model can answer in speech units (SpeechGPT, VoxtLM, SPIRIT-LM).")


class AdapterPromptOptions(ComponentOptions):
    """Audio-conditioned learned prompts attended to in the last LLM layers (MU-LLaMA, LLaMA-Adapter)."""

    num_layers: int | None = Field(None, ge=1, description="Last layers that get prompts; default: all.")
    prompt_length: int = Field(10, ge=1, description="Learned prompt vectors per layer.")


@hookimpl
def slmzoo_register_components(register):
    register(ComponentSpec(
        kind="fusion", name="concat",
        description="Audio embeddings replace each audio tag of the prompt (SALM).",
        options=ConcatOptions, factory="slmzoo_plugins.fusion.concat:ConcatFusion",
    ))
    register(ComponentSpec(
        kind="fusion", name="prefix",
        description="Audio embeddings before the whole text prompt (Pengi).",
        options=PrefixOptions, factory="slmzoo_plugins.fusion.prefix:PrefixFusion",
    ))
    register(ComponentSpec(
        kind="fusion", name="cross_attention",
        description="Text embeddings cross-attend to the audio in a small stack before the LLM (BESTOW).",
        options=CrossAttentionOptions, factory="slmzoo_plugins.fusion.cross_attention:CrossAttentionFusion",
    ))
    register(ComponentSpec(
        kind="fusion", name="gated_xattn",
        description="Zero-initialised tanh-gated cross-attention blocks between LLM layers (Flamingo).",
        options=GatedXAttnOptions, factory="slmzoo_plugins.fusion.gated_xattn:GatedCrossAttentionFusion",
    ))
    register(ComponentSpec(
        kind="fusion", name="token_space",
        description="Discrete audio units as new, trainable vocabulary tokens (SpeechGPT).",
        options=TokenSpaceOptions, factory="slmzoo_plugins.fusion.token_space:TokenSpaceFusion",
    ))
    register(ComponentSpec(
        kind="fusion", name="adapter_prompt",
        description="Audio-conditioned zero-gated prompts in the last LLM layers (MU-LLaMA).",
        options=AdapterPromptOptions, factory="slmzoo_plugins.fusion.adapter_prompt:AdapterPromptFusion",
    ))
