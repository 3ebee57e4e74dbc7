"""Encoder specs: names, descriptions and options. Imports no torch; implementations load on build."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PrivateAttr, model_validator

from slmzoo import hookimpl
from slmzoo.lora import LoraOptions
from slmzoo.registry import ComponentSpec, EncoderOptionsBase, OptionsRuleError


class EncoderOptions(EncoderOptionsBase):
    """Options every encoder shares: which encoder states reach the adapter (survey, section 4)."""

    layer: Literal["last", "weighted", "all"] | int = Field(
        "last",
        description="'last' layer; an int picks a layer (0 = embeddings, L = last; negative counts from the end); "
        "'weighted' is a learned softmax-weighted sum of all layers; 'all' stacks them as [B, L, T, C].",
    )
    lora: LoraOptions | None = Field(
        None, description="LoRA adapters in the encoder (base weights frozen, adapters trained); omit for none."
    )


class WhisperOptions(EncoderOptions):
    """The encoder of OpenAI Whisper, computing its own log-mel features."""

    pretrained: str | None = Field(
        None, description="Hub id or local folder of a Whisper checkpoint (transformers format), or of an audio LLM "
        "whose audio tower is a Whisper encoder (Qwen2-Audio, Audio Flamingo 3, Voxtral): its tower alone is read.")
    config: dict[str, Any] | None = Field(
        None, description="Inline WhisperConfig fields for a randomly initialised encoder (used with --meta too)."
    )
    pad_to_window: bool = Field(
        False, description="Pad every clip to the 30 s window exactly as the original; default is variable length."
    )
    pad_to_hop: bool = Field(
        False, description="Variable length: each clip zero-padded to a multiple of the 160-sample hop before its "
        "log-mel, ceil(len / 160) frames (Ultravox's processor: pad_to_multiple_of=160); default: floor(len / 160) "
        "frames of the clip's own samples.",
    )
    window_attention_mask: bool = Field(
        False, description="With pad_to_window: mask the padded positions out of attention (Qwen2-Audio's audio "
        "tower); the original Whisper attends to them.",
    )
    pool: int = Field(
        1, ge=1, description="Average-pool frames by this factor after the last layer, before the final LayerNorm "
        "(Qwen-Audio and Qwen2-Audio: 2, 25 frames/s).",
    )
    window_output: Literal["clip", "window"] = Field(
        "clip", description="With pad_to_window: 'clip' outputs the frames of the clip's own samples (downstream "
        "drops the encoded silence); 'window' outputs every frame of every 30 s window, encoded silence included "
        "(1500 per window, 1500 / pool pooled), as Voxtral's audio tower feeds its projector.",
    )
    long_clips: Literal["cut", "split", "windows"] = Field(
        "cut", description="Clips longer than 30 s. With pad_to_window: 'cut' keeps the first 30 s (Whisper, "
        "Qwen2-Audio); 'split' pads the clip to a multiple of 30 s, computes the log-mel over all of it and encodes "
        "each 30 s window on its own, the windows' frames concatenated in time (Voxtral's processor and tower); "
        "'windows' cuts the clip into 30 s pieces first, each with its own log-mel (Audio Flamingo 3's processor). "
        "Variable length: 'cut' refuses them; 'split' cuts the clip's own log-mel into 3000-frame windows, each "
        "encoded on its own, a short last one zero-padded to 3000 frames with its padding masked out of attention "
        "(Ultravox's processor and tower).",
    )
    window_multiple: int | None = Field(
        None, ge=1, description="With long_clips: split, each window of a clip longer than 30 s outputs its frames "
        "rounded up to a multiple of this, the positions past its frames as the tower computes them (zeros past "
        "1500), so a stack adapter with this k stacks each window on its own, as Ultravox's projector stacks each "
        "chunk (set it to adapter.k). null: the windows' frames follow each other.",
    )
    max_windows: int | None = Field(
        None, ge=1, description="With long_clips split or windows: at most this many 30 s windows per clip; a longer "
        "clip is cut there, with a warning (Audio Flamingo 3's processor: 20, its max_audio_len of 600 s). "
        "null: no limit.",
    )

    @model_validator(mode="after")
    def _window_options_need_the_window(self):
        if self.window_multiple is not None and self.long_clips != "split":
            raise OptionsRuleError("encoder", "window_multiple", f"{self.window_multiple} applies with long_clips: "
                                   "split (add encoder.long_clips: split, or remove encoder.window_multiple)")
        if self.pad_to_window:
            if self.pad_to_hop:
                raise OptionsRuleError("encoder", "pad_to_hop", "applies to variable length (pad_to_window: false)")
            return self
        if self.window_attention_mask:
            raise OptionsRuleError("encoder", "window_attention_mask", "applies with pad_to_window: true (variable "
                                   "length always masks padding)")
        if self.long_clips == "windows":
            raise OptionsRuleError("encoder", "long_clips", "'windows' applies with pad_to_window: true (variable "
                                   "length splits with long_clips: split)")
        for key, default in (("window_output", "clip"), ("max_windows", None)):
            value = getattr(self, key)
            if value != default:
                raise OptionsRuleError("encoder", key, f"{value!r} applies with pad_to_window: true (add encoder."
                                       f"pad_to_window: true, or remove encoder.{key}: variable length outputs the "
                                       "clip's own frames, up to 30 s)")
        return self


class SSLOptions(EncoderOptions):
    """A wav2vec2-family encoder (HuBERT, WavLM, wav2vec 2.0) on raw waveforms."""

    pretrained: str | None = Field(None, description="Hub id or local folder of a checkpoint (transformers format).")
    config: dict[str, Any] | None = Field(
        None, description="Inline model config fields: a randomly initialised encoder (used with --meta too); "
        "with pretrained, overrides of the checkpoint's config (e.g. layerdrop, mask_time_prob).",
    )
    normalize: bool | None = Field(
        None, description="Zero-mean unit-variance per clip over its own samples; default: the checkpoint's "
        "feature extractor do_normalize (True without one).",
    )


class ConformerOptions(SSLOptions):
    """A Conformer encoder: FastConformer (Parakeet, log-mel in) or wav2vec2-Conformer (waveform in)."""

    variant: Literal["fastconformer", "wav2vec2_conformer"] = Field(
        "fastconformer", description="fastconformer: transformers' ParakeetEncoder, 12.5 frames/s; "
        "wav2vec2_conformer: Wav2Vec2ConformerModel, 50 frames/s.",
    )
    pretrained: str | None = Field(
        None, description="Hub id or local folder (transformers format), or for fastconformer a NeMo .nemo file "
        "(canary, parakeet): its encoder config, preprocessor settings and encoder weights.",
    )
    feature_extractor: dict[str, Any] | None = Field(
        None, description="fastconformer: ParakeetFeatureExtractor settings (feature_size, hop_length, n_fft, "
        "win_length, preemphasis, sampling_rate, normalize; filterbank: stored keeps the mel filters and window as "
        "weights of the checkpoint, as NeMo's); default: the checkpoint's preprocessor_config.json or the .nemo "
        "preprocessor section.",
    )
    att_context_size: tuple[int, int] | None = Field(
        None, description="Streaming: NeMo's chunked-limited self-attention [left, right] in frames (chunks of right+1 "
        "frames, each seeing left // (right+1) chunks before it; left -1: all); default: full context.")
    causal_convolutions: bool = Field(
        False, description="Streaming: the depthwise convolutions see no future frame (NeMo conv_context_size: causal).")
    causal_downsampling: bool = Field(
        False, description="Streaming: the subsampling convs see no feature frame past their stride (NeMo "
        "causal_downsampling; padded kernel-1 before, stride-1 after, on time and frequency); random builds only.")
    conv_norm: Literal["batchnorm", "layernorm"] = Field(
        "batchnorm", description="fastconformer: the conv module's norm; layernorm is NeMo's conv_norm_type "
        "layer_norm (the streaming encoders').")

    @model_validator(mode="after")
    def _variant_options(self):
        if self.variant == "fastconformer" and self.normalize is not None:
            raise OptionsRuleError("encoder", "normalize", "set for variant fastconformer, but normalize applies to "
                                   "variant wav2vec2_conformer only (fastconformer normalises its log-mel features "
                                   "per clip as its feature extractor does)")
        streaming = [k for k in ("att_context_size", "causal_convolutions", "causal_downsampling", "conv_norm")
                     if k in self.model_fields_set and getattr(self, k) not in (None, False, "batchnorm")]
        if self.causal_downsampling and self.pretrained is not None:
            raise OptionsRuleError("encoder", "causal_downsampling", "reshapes the subsampling of a random build; a "
                                   "pretrained checkpoint's subsampling is symmetric (set pretrained: null)")
        if self.variant == "wav2vec2_conformer" and streaming:
            raise OptionsRuleError("encoder", streaming[0], "applies to variant fastconformer only")
        if self.att_context_size is not None and self.att_context_size[1] < 0:
            raise OptionsRuleError("encoder", "att_context_size", "the right context must be 0 or more frames")
        if self.variant == "wav2vec2_conformer" and self.feature_extractor is not None:
            raise OptionsRuleError("encoder", "feature_extractor", "set for variant wav2vec2_conformer, but "
                                   "feature_extractor applies to variant fastconformer only (wav2vec2_conformer reads "
                                   "the waveform; see normalize)")
        return self


class BEATsOptions(EncoderOptions):
    """Microsoft BEATs on raw waveforms (own implementation of the official code; loads its .pt checkpoints)."""

    pretrained: str | None = Field(
        None, description="Path to an official BEATs checkpoint (.pt with 'cfg' and 'model').")
    config: dict[str, Any] | None = Field(
        None, description="Inline BEATsConfig fields (official names) for random weights (used with --meta too); "
        "with pretrained, overrides of the checkpoint's cfg (e.g. dropout).",
    )


class ASTOptions(EncoderOptions):
    """Audio Spectrogram Transformer (transformers ASTModel), features as ASTFeatureExtractor."""

    pretrained: str | None = Field(
        None, description="Hub id or local folder of an AST checkpoint (transformers format).")
    config: dict[str, Any] | None = Field(
        None, description="Inline ASTConfig fields for random weights (used with --meta too); with pretrained, "
        "overrides.")
    feature_extractor: dict[str, Any] | None = Field(
        None, description="ASTFeatureExtractor settings (num_mel_bins, max_length, mean, std, do_normalize); "
        "default: the checkpoint's preprocessor_config.json.")
    output: Literal["patches", "frames", "pooled"] = Field(
        "patches", description="patches: every patch token, time-major [B, t*f, C]; frames: patches averaged over "
        "frequency [B, t, C]; pooled: the mean of the CLS and distillation tokens as one frame.",
    )


class ClapOptions(EncoderOptions):
    """The CLAP audio tower (transformers ClapAudioModel, HTSAT), features as ClapFeatureExtractor."""

    pretrained: str | None = Field(None, description="Hub id or local folder of a CLAP checkpoint (ClapModel or "
                                   "ClapAudioModel, transformers format).")
    config: dict[str, Any] | None = Field(
        None, description="Inline ClapAudioConfig fields for random weights (used with --meta too).")
    feature_extractor: dict[str, Any] | None = Field(
        None, description="ClapFeatureExtractor settings; default: the checkpoint's preprocessor_config.json. "
        "Also normalize: all_features (each clip's log-mel by its own mean and std, the input BatchNorm on its "
        "running statistics: for a CLAP trained from scratch).")
    output: Literal["frames", "pooled"] = Field(
        "frames", description="frames: the last stage's patch states, time-major [B, t*f, C]; pooled: the pooled "
        "audio embedding as one frame.",
    )

    @model_validator(mode="after")
    def _last_layer_only(self):
        if self.layer != "last":
            raise OptionsRuleError("encoder", "layer", "CLAP's Swin stages differ in width and resolution; only "
                                   "'last' is supported")
        padding = (self.feature_extractor or {}).get("padding", "repeatpad")
        if padding not in ("repeatpad", "repeat", "pad"):
            raise OptionsRuleError("encoder", "feature_extractor", f"padding {padding!r}: use repeatpad, repeat or pad")
        normalize = (self.feature_extractor or {}).get("normalize")
        if normalize not in (None, "all_features"):
            raise OptionsRuleError("encoder", "feature_extractor", f"normalize {normalize!r}: use all_features, or "
                                   "leave it out (CLAP's features)")
        return self

    def sampling_rate(self) -> int:
        return int((self.feature_extractor or {}).get("sampling_rate", 48000))


class MultiOptions(EncoderOptionsBase):
    """Several encoders side by side; outputs aligned to one frame rate and concatenated on channels."""

    encoders: list[dict[str, Any]] = Field(
        ..., min_length=1, description="Encoder blocks ({type: NAME, ...its options}), each validated against the "
        "options of its registered encoder.",
    )
    align: Literal["first", "max", "min"] = Field(
        "first", description="Target frame rate (and lengths): the first encoder's, the highest or the lowest.")
    resample: Literal["nearest", "linear", "pool"] = Field(
        "linear", description="How other encoders' frames reach the target rate, by time: nearest frame, linear "
        "interpolation, or averaging the frames each target frame covers.",
    )

    _resolved: list = PrivateAttr(default_factory=list)  # (ComponentSpec, options) of each block, validated once

    @model_validator(mode="after")
    def _validate_encoders(self):
        """Each block against its encoder's options (the card's own block validation); errors carry
        ``encoders.<i>.<key>`` so cards point at them."""
        from pydantic import ValidationError
        from pydantic_core import InitErrorDetails, PydanticCustomError

        from slmzoo.card.validate import UnknownComponentError, resolve_block

        errors, blocks, resolved = [], [], []
        for i, block in enumerate(self.encoders):
            try:
                spec, options = resolve_block("encoder", block)
            except UnknownComponentError as error:
                errors.append(InitErrorDetails(type=PydanticCustomError("unknown_encoder", f"{error} ({error.hint})"),
                                               loc=("encoders", i, "type"), input=error.name))
                continue
            except ValidationError as error:  # same types (the card maps extra_forbidden, missing), longer loc
                errors += [InitErrorDetails(type=PydanticCustomError(e["type"], e["msg"]), input=e.get("input"),
                                            loc=("encoders", i, *e["loc"])) for e in error.errors()]
                continue
            if getattr(options, "layer", "last") == "all":
                errors.append(InitErrorDetails(type=PydanticCustomError(
                    "stacked_layers", f"encoder.encoders[{i}].layer: 'all' (stacked layers) cannot be concatenated "
                    "with other encoders; use 'last', an index or 'weighted'"), loc=("encoders", i, "layer"),
                    input="all"))
                continue
            blocks.append({"type": spec.name, **options.model_dump(mode="json")})
            resolved.append((spec, options))
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        self.encoders = blocks  # explicit and normalised, as the resolved card shows every other block
        self._resolved = resolved
        return self

    def resolved_encoders(self) -> list:
        """``(ComponentSpec, options)`` of each sub-encoder, in order."""
        return list(self._resolved)

    def sampling_rate(self) -> int:
        """The first sub-encoder's (the others get their clips resampled)."""
        first = self._resolved[0][1] if self._resolved else None
        return first.sampling_rate() if isinstance(first, EncoderOptionsBase) else 16000


class GraniteCTCOptions(EncoderOptions):
    """Granite Speech's CTC Conformer (transformers' GraniteSpeechCTCEncoder) on stacked log-mels, 50 frames/s."""

    pretrained: str | None = Field(
        None, description="Hub id or local folder of a Granite Speech checkpoint (GraniteSpeechForConditionalGeneration:"
        " its encoder_config and encoder weights only) or of a bare GraniteSpeechCTCEncoder (transformers format).")
    config: dict[str, Any] | None = Field(
        None, description="Inline GraniteSpeechEncoderConfig fields (input_dim, hidden_dim, num_layers, num_heads, "
        "context_size, ...) for random weights (used with --meta too); with pretrained, overrides.")
    feature_extractor: dict[str, Any] | None = Field(
        None, description="GraniteSpeechFeatureExtractor settings (sampling_rate, n_fft, win_length, hop_length, "
        "n_mels); default: the checkpoint's preprocessor_config.json, else 16 kHz, 512, 400, 160, input_dim / 2.")


# Small random-weight configurations the contract-test kit (slmzoo.testing) builds encoders no tiny preset uses from.
TINY_SSL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                conv_dim=[16, 16, 16], conv_stride=[5, 2, 2], conv_kernel=[10, 3, 2], num_conv_pos_embeddings=8,
                num_conv_pos_embedding_groups=2, feat_extract_norm="layer", do_stable_layer_norm=True, layerdrop=0.0)
TINY_BEATS = dict(input_patch_size=16, embed_dim=24, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=40,
                  encoder_attention_heads=4, conv_pos=8, conv_pos_groups=4, relative_position_embedding=True,
                  num_buckets=16, max_distance=64, gru_rel_pos=True, deep_norm=True)


@hookimpl
def slmzoo_register_components(register):
    for name, title, factory in (("hubert", "HuBERT", "HubertEncoder"), ("wavlm", "WavLM", "WavLMEncoder"),
                                 ("wav2vec2", "wav2vec 2.0", "Wav2Vec2Encoder")):
        register(ComponentSpec(
            kind="encoder", name=name, options=SSLOptions, factory=f"slmzoo_plugins.encoders.ssl:{factory}",
            description=f"{title} (conv feature encoder + transformer) on raw waveforms, 50 frames/s.",
            example={"config": TINY_SSL},
        ))
    register(ComponentSpec(
        kind="encoder", name="conformer", options=ConformerOptions, factory="slmzoo_plugins.encoders.conformer:Conformer",
        description="Conformer: FastConformer/Parakeet (log-mel, 12.5 frames/s) or wav2vec2-Conformer (50 frames/s).",
    ))
    register(ComponentSpec(
        kind="encoder", name="whisper",
        description="Whisper encoder (log-mel + conv + transformer), variable length by default, 50 frames/s.",
        options=WhisperOptions, factory="slmzoo_plugins.encoders.whisper:WhisperEncoder",
    ))
    register(ComponentSpec(
        kind="encoder", name="beats", options=BEATsOptions, factory="slmzoo_plugins.encoders.beats:BEATsEncoder",
        description="BEATs audio encoder (Kaldi fbank + 16x16 patches + transformer), 50 tokens/s (8 per 160 ms).",
        example={"config": TINY_BEATS},
    ))
    register(ComponentSpec(
        kind="encoder", name="ast", options=ASTOptions, factory="slmzoo_plugins.encoders.ast:ASTEncoder",
        description="Audio Spectrogram Transformer (Kaldi fbank, fixed 10.24 s window), as used by LTU and GAMA.",
    ))
    register(ComponentSpec(
        kind="encoder", name="clap", options=ClapOptions, factory="slmzoo_plugins.encoders.clap:ClapEncoder",
        description="CLAP audio tower (HTSAT, 48 kHz, fixed 10 s window), as used by Pengi and Audio Flamingo.",
    ))
    register(ComponentSpec(
        kind="encoder", name="multi", options=MultiOptions, factory="slmzoo_plugins.encoders.multi:MultiEncoder",
        description="Several encoders side by side (SALMONN: Whisper + BEATs), aligned in time and concatenated.",
    ))
    register(ComponentSpec(
        kind="encoder", name="granite_ctc", options=GraniteCTCOptions,
        factory="slmzoo_plugins.encoders.granite_ctc:GraniteCTCEncoder",
        description="Granite Speech's CTC Conformer (block attention, stacked log-mels), 50 frames/s.",
    ))
