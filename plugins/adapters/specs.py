"""Adapter specs. Imports no torch; implementations load on build."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from slmzoo import hookimpl
from slmzoo.registry import ComponentOptions, ComponentSpec, OptionsRuleError


class StackOptions(ComponentOptions):
    """Stack k consecutive frames, then an MLP into the LLM width (Ultravox, SLAM-ASR, Voxtral)."""

    k: int = Field(8, ge=1, description="Frames stacked into one embedding (divides the frame rate by k).")
    hidden_dim: int | None = Field(None, ge=1, description="MLP hidden width; default: the LLM width.")
    activation: Literal["gelu", "relu", "silu", "swiglu"] = Field("gelu", description="MLP activation.")
    norm: Literal["none", "layernorm", "rmsnorm"] = Field("none", description="Normalisation of the stacked frames.")
    mid_norm: Literal["none", "layernorm", "rmsnorm"] = Field(
        "none", description="Normalisation after the activation (Ultravox v0.5+'s `ln_mid`).")
    bias: bool = Field(True, description="Biases in both Linear layers; false for Ultravox's and Voxtral's projectors.")
    norm_init: float = Field(1.0, gt=0, description="Initial weight of both norms (Ultravox's `norm_init`: 0.4).")

    @model_validator(mode="after")
    def _swiglu_splits_the_width(self):
        if self.activation == "swiglu" and self.hidden_dim is not None and self.hidden_dim % 2:
            raise OptionsRuleError("adapter", "hidden_dim", f"swiglu halves the hidden width, so hidden_dim must be "
                                   f"even (got {self.hidden_dim})")
        return self


class LinearOptions(ComponentOptions):
    """One Linear layer from the encoder width into the LLM width."""

    bias: bool = Field(True, description="Add a bias.")


class MLPOptions(ComponentOptions):
    """Linear-act-Linear per frame (LLaVA-style projector), frame rate unchanged."""

    hidden_dim: int | None = Field(None, ge=1, description="Hidden width; default: the LLM width.")
    activation: Literal["gelu", "relu", "silu"] = Field("gelu", description="Activation between the layers.")
    num_layers: int = Field(2, ge=1, description="Linear layers (1 = a single Linear).")


class AudioTransformerOptions(ComponentOptions):
    """A small transformer encoder over the frames, with positions, then a Linear (Audio Flamingo's audio
    representation transformation)."""

    num_layers: int = Field(3, ge=1, description="Transformer layers (Audio Flamingo: 3).")
    num_heads: int = Field(8, ge=1, description="Attention heads; must divide the encoder width.")
    ff_dim: int = Field(2048, ge=1, description="Feed-forward inner width (Audio Flamingo: 2048).")
    position: Literal["sinusoidal", "none"] = Field(
        "sinusoidal", description="Positional encoding added to the frames (a cross-attention fusion has no other "
        "clue to their order).")
    scale_input: bool = Field(True, description="Scale the frames by sqrt(width) before the positions are added.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout inside the layers (Audio Flamingo: 0).")


class ConvOptions(ComponentOptions):
    """Strided Conv1d layers with GELU, then a Linear into the LLM width."""

    stride: int = Field(4, ge=1, description="Total downsampling, split over the layers (8 over 2 layers: 4, 2).")
    kernel: int = Field(3, ge=1, description="Kernel size of every conv; each pads (kernel - 1) // 2 frames.")
    layers: int = Field(2, ge=1, description="Conv layers.")
    hidden_dim: int | None = Field(None, ge=1, description="Conv channels; default: the LLM width.")


class AvgPoolOptions(ComponentOptions):
    """Average pooling over time, LayerNorm, Linear into the LLM width (a Qwen2-Audio-style reduction)."""

    pool: int = Field(2, ge=1, description="Frames averaged into one (Qwen2-Audio: 2, from 50 to 25 per second).")
    norm: bool = Field(True, description="LayerNorm after pooling, before the Linear.")
    keep_partial: bool = Field(
        False, description="Keep a trailing window with fewer than `pool` real frames as their mean "
        "(ceil lengths); default drops it like AvgPool1d and Qwen2-Audio (floor lengths).")


class QFormerOptions(ComponentOptions):
    """Learned queries and a BLIP-2 Q-Former (transformers' Blip2QFormerModel), then a Linear."""

    num_queries: int = Field(32, ge=1, description="Learned query tokens: embeddings per clip.")
    num_layers: int = Field(2, ge=1, description="Q-Former layers.")
    hidden_size: int = Field(768, ge=1, description="Q-Former width.")
    num_heads: int = Field(12, ge=1, description="Attention heads (must divide hidden_size).")
    intermediate_size: int | None = Field(None, ge=1, description="Feed-forward width; default 4 x hidden_size.")
    cross_attention_every: int = Field(
        1, ge=1, description="Cross-attention in every n-th layer (SALMONN 1, BLIP-2 2).")
    dropout: float = Field(0.1, ge=0, le=1, description="Hidden and attention dropout.")
    input_norm: bool = Field(False, description="LayerNorm on the encoder frames first (SALMONN's ln_speech).")
    query_init_std: float = Field(
        0.02, gt=0, description="Std of the learned queries' normal init (BLIP-2 0.02; Granite Speech 1.0).")
    init_std: float | None = Field(
        None, gt=0, description="Std of the Q-Former's weights when built at random; default BERT's 0.02 at width "
        "768, scaled by sqrt(768 / hidden_size) for other widths.")


class WindowQFormerOptions(QFormerOptions):
    """A Q-Former per window of frames (SALMONN: 17 frames of 50 Hz ~ 0.33 s, 1 query; Granite Speech: 15, 3)."""

    num_queries: int = Field(1, ge=1, description="Learned queries per window: embeddings per window.")
    window: int = Field(17, ge=1, description="Frames per window (SALMONN: 17 of 50 Hz = 0.33 s).")
    stride: int | None = Field(None, ge=1, description="Frames between window starts; default: the window.")
    last_window: Literal["mask", "zeros"] = Field(
        "mask", description="A clip's last, partial window: 'mask' hides its missing frames from the cross-attention; "
        "'zeros' fills them with zero frames the queries attend to, as Granite Speech's projector does.")


class ConformerAdapterOptions(ComponentOptions):
    """NeMo SALM's modality adapter: Conformer layers (transformers' ParakeetEncoderBlock), then a Linear."""

    num_layers: int = Field(2, ge=1, description="Conformer layers (NeMo SALM: 2).")
    d_model: int | None = Field(None, ge=1, description="Conformer width; default: the encoder width.")
    num_heads: int = Field(8, ge=1, description="Attention heads (must divide d_model).")
    ff_expansion: int = Field(4, ge=1, description="Feed-forward width as a multiple of d_model.")
    conv_kernel: int = Field(9, ge=1, description="Depthwise conv kernel (odd).")
    conv_norm: Literal["layernorm", "batchnorm"] = Field(
        "layernorm", description="Norm in the conv module. 'batchnorm' is NeMo's default, but its training "
        "statistics mix every clip and the padding of the batch; 'layernorm' normalises each frame.")
    xscaling: bool = Field(True, description="Scale the input by sqrt(d_model), as NeMo.")
    dropout: float = Field(0.1, ge=0, le=1, description="Dropout everywhere.")
    att_context_size: tuple[int, int] | None = Field(
        None, description="Streaming: NeMo's chunked-limited self-attention [left, right] in frames (chunks of right+1 "
        "frames, each seeing left // (right+1) chunks before it; left -1: all); default: full context.")
    causal_convolutions: bool = Field(
        False, description="Streaming: the depthwise convolutions see no future frame (NeMo conv_context_size: causal).")

    @model_validator(mode="after")
    def _odd_kernel(self):
        if self.conv_kernel % 2 == 0:
            raise OptionsRuleError("adapter", "conv_kernel", f"must be odd ('same' padding); got {self.conv_kernel}")
        if self.d_model is not None and self.d_model % self.num_heads:
            raise OptionsRuleError("adapter", "num_heads", f"{self.num_heads} does not divide d_model {self.d_model}")
        return self


class CTCCompressOptions(ComponentOptions):
    """Speech-LLaMA's CTC compressor: greedy CTC runs averaged into one frame each, then a small transformer."""

    vocab_size: int = Field(1000, ge=2, description="CTC labels including the blank (id 0).")
    mode: Literal["avg"] = Field("avg", description="How a run of frames becomes one: their average.")
    remove_blank: bool = Field(True, description="Drop runs of blank frames (a clip keeps at least one frame).")
    num_layers: int = Field(4, ge=0, description="Transformer layers after compression (Speech-LLaMA: 4).")
    num_heads: int = Field(8, ge=1, description="Attention heads (must divide the encoder width).")
    ff_dim: int | None = Field(None, ge=1, description="Feed-forward width; default 4 x the encoder width.")
    dropout: float = Field(0.1, ge=0, le=1, description="Transformer dropout.")
    ctc_weight: float = Field(0.0, ge=0, description="Weight of the CTC loss added to the LLM loss in training; "
                              "its labels are the response's LLM token ids + 1 (vocab_size must exceed the LLM's).")


class TLTROptions(ComponentOptions):
    """LTU-AS's time and layer-wise transformer over all encoder layers [B, L, T, C] (encoder layer: all)."""

    pool: int = Field(20, ge=1, description="Frames averaged into one (LTU-AS: 20, 500 Whisper frames of a 10 s "
                      "clip -> 25).")
    hidden_dim: int | None = Field(None, ge=1, description="Down projection first (Whisper-AT's low-dim TLTR: 512); "
                                   "default: none, the encoder width (LTU-AS).")
    num_layers: int = Field(1, ge=1, description="Layers of the time transformer and of the layer transformer.")
    time_heads: int = Field(1, ge=1, description="Heads of the time transformer (LTU-AS: 1).")
    layer_heads: int = Field(8, ge=1, description="Heads of the layer transformer (LTU-AS: 8).")
    layer_pooling: Literal["mean", "attention"] = Field(
        "mean", description="How the layers merge per time step: mean (LTU-AS), or softmax of a learned score.")
    dropout: float = Field(0.0, ge=0, le=1, description="Transformer dropout.")


class DiscreteUnitsOptions(ComponentOptions):
    """Nearest k-means centroid per frame, repeats collapsed: unit ids for new LLM tokens (SpeechGPT, SPIRIT-LM)."""

    num_units: int | None = Field(None, ge=2, description="k-means units; default: the codebook's, else 500.")
    codebook: str | None = Field(None, description="Centroids [K, C] in a .npy or .safetensors file "
                                 "(from `slmzoo units fit`); default: random.")
    dedup: bool = Field(True, description="Collapse runs of the same unit into one.")


@hookimpl
def slmzoo_register_components(register):
    register(ComponentSpec(
        kind="adapter", name="stack",
        description="Frame stacking by k + MLP into the LLM width (Ultravox, SLAM-ASR).",
        options=StackOptions, factory="slmzoo_plugins.adapters.stack:StackAdapter",
    ))
    register(ComponentSpec(
        kind="adapter", name="linear",
        description="One Linear layer into the LLM width.",
        options=LinearOptions, factory="slmzoo_plugins.adapters.linear:LinearAdapter",
    ))
    register(ComponentSpec(
        kind="adapter", name="mlp",
        description="Linear-act-Linear per frame into the LLM width.",
        options=MLPOptions, factory="slmzoo_plugins.adapters.mlp:MLPAdapter",
    ))
    register(ComponentSpec(
        kind="adapter", name="audio_transformer",
        description="Transformer layers with positions over the frames + Linear (Audio Flamingo).",
        options=AudioTransformerOptions, factory="slmzoo_plugins.adapters.audio_transformer:AudioTransformerAdapter",
    ))
    register(ComponentSpec(
        kind="adapter", name="conv",
        description="Strided Conv1d downsampling + Linear into the LLM width.",
        options=ConvOptions, factory="slmzoo_plugins.adapters.conv:ConvAdapter",
    ))
    register(ComponentSpec(
        kind="adapter", name="avgpool",
        description="Average pooling by 2 + LayerNorm + Linear (Qwen2-Audio).",
        options=AvgPoolOptions, factory="slmzoo_plugins.adapters.avgpool:AvgPoolAdapter", example={"pool": 2},
    ))
    register(ComponentSpec(
        kind="adapter", name="qformer",
        description="Learned queries over the whole clip, BLIP-2 Q-Former (COSMIC, GAMA); fixed embeddings per clip.",
        options=QFormerOptions, factory="slmzoo_plugins.adapters.qformer:QFormerAdapter",
    ))
    register(ComponentSpec(
        kind="adapter", name="window_qformer",
        description="Q-Former per window of ~0.33 s, queries per window (SALMONN, Granite Speech).",
        options=WindowQFormerOptions, factory="slmzoo_plugins.adapters.window_qformer:WindowQFormerAdapter",
    ))
    register(ComponentSpec(
        kind="adapter", name="conformer_adapter",
        description="Conformer layers at the encoder width + Linear (NeMo SALM's modality adapter).",
        options=ConformerAdapterOptions, factory="slmzoo_plugins.adapters.conformer_adapter:ConformerAdapter",
    ))
    register(ComponentSpec(
        kind="adapter", name="ctc_compress",
        description="CTC compression: greedy CTC runs averaged, blanks removed, small transformer (Speech-LLaMA).",
        options=CTCCompressOptions, factory="slmzoo_plugins.adapters.ctc_compress:CTCCompressAdapter",
    ))
    register(ComponentSpec(
        kind="adapter", name="tltr",
        description="Time and layer-wise transformer over all encoder layers, pooled by 20 (LTU-AS).",
        options=TLTROptions, factory="slmzoo_plugins.adapters.tltr:TLTRAdapter",
    ))
    register(ComponentSpec(
        kind="adapter", name="discrete_units",
        description="k-means units per frame, repeats collapsed, as new LLM tokens (SpeechGPT, VoxtLM, SPIRIT-LM).",
        options=DiscreteUnitsOptions, factory="slmzoo_plugins.adapters.discrete_units:DiscreteUnitsAdapter",
    ))


@hookimpl
def slmzoo_register_commands(register):
    from slmzoo_plugins.adapters.units_cli import units_app

    register("units", units_app)
