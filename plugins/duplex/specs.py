"""Duplex specs: the ``codec`` and ``speech_head`` kinds, their components and the ``duplex_s2s`` architecture.

Imports no torch; implementations load when a model is built. See ``../shared/research/duplex.md`` for the NeMo
code this follows (``DuplexS2SModel``, ``duplex_s2s_model.py``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from slmzoo import hookimpl
from slmzoo.registry import ArchitectureSpec, ComponentKind, ComponentOptions, ComponentSpec, Section

KINDS = (
    ComponentKind("codec", "A frozen neural audio codec: waveform [B, S] -> codes [B, K, T] and back, K codebooks "
                  "of V codes at a fixed frame rate.", base="slmzoo_plugins.duplex.components:Codec"),
    ComponentKind("speech_head", "Predicts the K codebooks of the agent's next speech frame from the LLM's hidden "
                  "states (and embeds the previous frame's codes).",
                  base="slmzoo_plugins.duplex.components:SpeechHead"),
)


class MimiOptions(ComponentOptions):
    """Kyutai's Mimi codec (transformers' ``MimiModel``): 24 kHz, 12.5 frames/s, split residual VQ."""

    pretrained: str | None = Field(None, description="Hub id or local folder of a Mimi checkpoint (kyutai/mimi).")
    config: dict[str, Any] | None = Field(None, description="Inline MimiConfig fields for random weights.")
    num_codebooks: int = Field(8, ge=1, description="Codebooks used (the first K quantizers of the residual VQ).")


class SpectralKMeansOptions(ComponentOptions):
    """A codec fitted on the corpus (``slmzoo codec fit``): k-means over 10 ms log-magnitude spectra, Griffin-Lim."""

    codebook: str | None = Field(None, description="The fitted centroids [V, n_fft/2+1] (.npy, from `slmzoo codec "
                                 "fit`); omit for random spectra (tests) or a saved model, whose weights hold them.")
    codebook_size: int = Field(256, ge=2, description="V, when no codebook file is given (`codec fit` default).")
    sampling_rate: int = Field(16000, description="Audio rate of the codec.")
    frame_rate: float = Field(12.5, gt=0, description="Codec frames per second (the model's 80 ms clock).")
    sub_frames: int = Field(8, ge=1, description="K: sub-frames (10 ms spectra) per frame, one codebook each.")
    n_fft: int = Field(512, ge=16)
    griffin_lim_iters: int = Field(32, ge=1, description="Griffin-Lim iterations when decoding.")


class ParallelHeadOptions(ComponentOptions):
    """NeMo DuplexS2SModel's audio head: one Linear ``H -> K * (V + 3)``, all codebooks of a frame in parallel, and
    one embedding table per codebook whose sum joins the LLM input."""


class ARDecoderOptions(ComponentOptions):
    """NeMo's TransformerARSpeechDecoder (s2s_duplex_speech_decoder.yaml's ``speech_decoder`` block, same names)."""

    n_layers: int = Field(12, ge=1)
    d_model: int = Field(768, ge=1)
    d_ffn: int = Field(3072, ge=1)
    n_heads: int = Field(12, ge=1, description="NeMo's sa_n_heads.")
    kernel_size: int = Field(3, ge=1, description="Causal conv feed-forward kernel.")
    dropout: float = Field(0.1, ge=0, lt=1, description="NeMo's p_dropout.")
    norm_out: bool = Field(True, description="Final LayerNorm (NeMo's apply_norm_out).")
    max_frames: int = Field(5000, ge=1, description="Frames the learnable positions cover (max_length_causal_mask).")
    learnable_positions: bool = Field(True, description="NeMo's use_learnable_pos_emb.")
    condition_on_previous_codes: bool = Field(True, description="Add the previous frame's code embeddings "
                                              "(cond_on_prev_audio_tokens).")


class DuplexSettings(BaseModel):
    """The ``duplex:`` block of a duplex card: NeMo's loss weights, user-channel weight, frame clock and roles."""

    model_config = ConfigDict(extra="forbid")
    text_loss_weight: float = Field(3.0, ge=0, description="Weight of the text-channel loss (NeMo YAML: 3).")
    audio_loss_weight: float = Field(4.0, ge=0, description="Weight of the speech-code loss (NeMo YAML: 4; its "
                                     "tests and the paper: 1).")
    masked_loss: bool = Field(False, description="Leave padded frames out of both losses; NeMo sums over them "
                              "(and divides by the valid frames only).")
    user_channel_weight: float = Field(1.0, description="Scale of the user's encoder frames in the LLM input "
                                       "(NeMo's duplex_user_channel_weight).")
    user_ctc_weight: float = Field(0.0, ge=0, description="Weight of an auxiliary CTC loss of the user's "
                                   "transcript on the user channel as the LLM reads it (0: off, as NeMo, whose "
                                   "encoder comes pretrained on ASR; a from-scratch encoder learns what the user "
                                   "says from it far sooner than from the agent's answers alone).")
    frame_length: float = Field(0.08, gt=0, description="Seconds per frame: the encoder, text and codec clock.")
    input_roles: list[str] = Field(default_factory=lambda: ["user", "User"], description="Speakers of the user.")
    output_roles: list[str] = Field(default_factory=lambda: ["agent", "Assistant", "assistant"],
                                    description="Speakers of the agent, whose text and speech the model produces.")
    bos_token: str | None = Field(None, description="Text token opening each agent turn; default the tokenizer's "
                                  "BOS (a <|startoftext|> special token is added to a tokenizer without one).")


class DuplexCardFields(BaseModel):
    duplex: DuplexSettings = Field(default_factory=DuplexSettings, description="Duplex training and decoding.")


DUPLEX_S2S = ArchitectureSpec(
    name="duplex_s2s",
    description="Full-duplex speech-to-speech (NeMo DuplexS2SModel): per 80 ms frame the LLM reads the user's "
                "encoder frame + the agent's text token + its previous speech codes, and predicts the next text "
                "token and this frame's K codebooks; a codec turns the codes into speech.",
    sections=(
        Section("encoder", "encoder", description="The user channel's streaming speech encoder."),
        Section("adapter", "adapter", description="Maps encoder frames into the LLM width."),
        Section("llm", "llm", description="The language model, one position per frame."),
        Section("codec", "codec", description="The agent's speech codec (frozen, fp32)."),
        Section("speech_head", "speech_head", required=False, default={"type": "parallel"},
                description="Speech-code embeddings in and logits out; default: NeMo's parallel linear head."),
    ),
    build_order=("llm", "codec", "encoder", "adapter", "speech_head"),
    model="slmzoo_plugins.duplex.model:DuplexS2S",
    card_fields=DuplexCardFields,
    processor="slmzoo_plugins.duplex.processing:duplex_processor",
)


DUPLEX_S2S_SPEECH_DECODER = ArchitectureSpec(
    name="duplex_s2s_speech_decoder",
    description="DuplexS2S with NeMo's autoregressive speech decoder (DuplexS2SSpeechDecoderModel): the LLM reads "
                "the user frame + the agent's text token only; a causal transformer over the LLM's hidden states and "
                "the previous frame's codes predicts each frame's K codebooks.",
    sections=tuple(s if s.name != "speech_head" else Section(
        "speech_head", "speech_head", required=False, default={"type": "ar_decoder"},
        description="The autoregressive speech decoder; default: NeMo's TransformerARSpeechDecoder.")
        for s in DUPLEX_S2S.sections),
    build_order=DUPLEX_S2S.build_order,
    model=DUPLEX_S2S.model,
    card_fields=DuplexCardFields,
    processor=DUPLEX_S2S.processor,
)


@hookimpl
def slmzoo_register_commands(register):
    from slmzoo_plugins.duplex.codec_cli import codec_app
    from slmzoo_plugins.duplex.duplex_cli import duplex_app

    register("codec", codec_app, help="Speech codecs: fit a codebook on a corpus.")
    register("duplex", duplex_app, help="Duplex corpora: cut a channel into its turns; a word-level tokenizer.")


@hookimpl
def slmzoo_register_components(register):
    for kind in KINDS:
        register(kind)
    register(ComponentSpec(
        kind="codec", name="mimi", description="Kyutai Mimi (transformers MimiModel): 24 kHz, 12.5 frames/s, "
        "residual VQ; the first num_codebooks quantizers are used.", options=MimiOptions,
        factory="slmzoo_plugins.duplex.mimi:MimiCodec",
        example={"config": {"hidden_size": 32, "num_filters": 8, "upsample_groups": 32, "codebook_size": 64,
                            "codebook_dim": 16, "vector_quantization_hidden_dimension": 16, "num_hidden_layers": 1,
                            "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16,
                            "intermediate_size": 64, "num_quantizers": 4, "sliding_window": 16},
                 "num_codebooks": 4}))
    register(ComponentSpec(
        kind="codec", name="spectral_kmeans", description="A codec fitted on the corpus in a minute (slmzoo codec "
        "fit): k-means codes of 10 ms log-magnitude spectra, K per 80 ms frame; Griffin-Lim decoding.",
        options=SpectralKMeansOptions, factory="slmzoo_plugins.duplex.spectral_codec:SpectralKMeansCodec",
        example={"codebook_size": 16, "griffin_lim_iters": 4}))
    register(ComponentSpec(
        kind="speech_head", name="parallel", description="NeMo DuplexS2SModel's audio head: Linear H -> K x (V+3) "
        "and K summed code embeddings in the LLM input.", options=ParallelHeadOptions,
        factory="slmzoo_plugins.duplex.speech_heads:ParallelSpeechHead"))
    register(ComponentSpec(
        kind="speech_head", name="ar_decoder", description="NeMo DuplexS2SSpeechDecoderModel's "
        "TransformerARSpeechDecoder: a causal transformer over the LLM states and previous codes (conv FFN).",
        options=ARDecoderOptions, factory="slmzoo_plugins.duplex.ar_speech_decoder:ARSpeechDecoder",
        example={"n_layers": 1, "d_model": 32, "d_ffn": 64, "n_heads": 2, "max_frames": 500}))
    register(DUPLEX_S2S)
    register(DUPLEX_S2S_SPEECH_DECODER)
