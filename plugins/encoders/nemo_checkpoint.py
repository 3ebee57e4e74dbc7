"""Reading the encoder of a NeMo ``.nemo`` checkpoint (a tar of ``model_config.yaml`` and a state dict) into
transformers' ``ParakeetEncoder`` (FastConformer): canary and parakeet encoders, e.g. canary-qwen-2.5b's.

The key and config mappings are those of transformers' own Parakeet conversion (NeMo ConformerEncoder
names -> Parakeet names); preprocessing buffers and every non-encoder tensor (decoder, joint) are dropped.
"""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path
from typing import Any

import torch
import yaml

from slmzoo_plugins.encoders.hf_loading import PretrainedLoadError

ENCODER_KEYS = [  # (NeMo pattern, Parakeet replacement), applied in order to keys relative to the encoder
    (r"^pre_encode\.conv\.", "subsampling.layers."),
    (r"^pre_encode\.out\.", "subsampling.linear."),
    (r"^pos_enc\.", "encode_positions."),
    (r"^layers\.(\d+)\.conv\.batch_norm\.", r"layers.\1.conv.norm."),
    (r"linear_([kv])\b", r"\1_proj"),
    (r"linear_out\b", "o_proj"),
    (r"linear_q\b", "q_proj"),
    (r"pos_bias_([uv])\b", r"bias_\1"),
    (r"linear_pos\b", "relative_k_proj"),
]
CONFIG_KEYS = {  # NeMo encoder config -> ParakeetEncoderConfig
    "d_model": "hidden_size", "n_heads": "num_attention_heads", "n_layers": "num_hidden_layers",
    "feat_in": "num_mel_bins", "conv_kernel_size": "conv_kernel_size", "subsampling_factor": "subsampling_factor",
    "subsampling_conv_channels": "subsampling_conv_channels", "pos_emb_max_len": "max_position_embeddings",
    "dropout": "dropout", "dropout_emb": "dropout_positions", "dropout_att": "attention_dropout",
    "xscaling": "scale_input", "use_bias": "attention_bias", "stochastic_depth_drop_prob": "layerdrop",
}
PREPROCESSOR_KEYS = {  # NeMo preprocessor config -> ParakeetFeatureExtractor settings (seconds become samples)
    "sample_rate": "sampling_rate", "window_size": "win_length", "window_stride": "hop_length", "n_fft": "n_fft",
    "features": "feature_size", "preemphasis": "preemphasis", "pad_value": "padding_value",
}


def is_nemo_file(pretrained: str | None) -> bool:
    return pretrained is not None and str(pretrained).endswith(".nemo")


def _members(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if not path.is_file():
        raise PretrainedLoadError(f"encoder.pretrained: no such .nemo file {path}")
    try:
        with tarfile.open(path, "r:*") as tar:
            names = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            config_member = names.get("model_config.yaml")
            weights_member = names.get("model_weights.ckpt")
            if config_member is None or weights_member is None:
                raise PretrainedLoadError(f"encoder.pretrained: {path} lacks model_config.yaml or model_weights.ckpt")
            config = yaml.safe_load(tar.extractfile(config_member).read())
            state = torch.load(io.BytesIO(tar.extractfile(weights_member).read()), map_location="cpu",
                               weights_only=True)
    except tarfile.TarError as error:
        raise PretrainedLoadError(f"encoder.pretrained: {path} is not a .nemo archive ({error})") from None
    return config, state


def read_nemo_config(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(ParakeetEncoderConfig fields, feature extractor settings)`` of a ``.nemo`` file."""
    config, _ = _members(Path(path))
    return encoder_fields(config.get("encoder") or {}), feature_fields(config.get("preprocessor") or {})


def encoder_fields(encoder: dict[str, Any]) -> dict[str, Any]:
    """A NeMo ``ConformerEncoder`` config section as ParakeetEncoderConfig fields."""
    fields = {"layerdrop": 0.0}  # NeMo's default: no stochastic depth
    for key, value in encoder.items():
        if key in CONFIG_KEYS:
            fields[CONFIG_KEYS[key]] = value
            if key == "use_bias":
                fields["convolution_bias"] = value
    if "ff_expansion_factor" in encoder and "d_model" in encoder:  # NeMo gives the FFN width as a multiple
        fields["intermediate_size"] = encoder["d_model"] * encoder["ff_expansion_factor"]
    return fields


def feature_fields(preprocessor: dict[str, Any]) -> dict[str, Any]:
    """A NeMo ``AudioToMelSpectrogramPreprocessor`` config section as feature extractor settings."""
    rate = preprocessor.get("sample_rate", 16000)
    return {PREPROCESSOR_KEYS[k]: (int(v * rate) if k in ("window_size", "window_stride") else v)
            for k, v in preprocessor.items() if k in PREPROCESSOR_KEYS}


def nemo_encoder_name(key: str) -> str:
    """A NeMo ConformerEncoder tensor name (relative to the encoder) as ParakeetEncoder's."""
    for pattern, replacement in ENCODER_KEYS:
        key = re.sub(pattern, replacement, key)
    return key


def read_nemo_encoder_state(path: str) -> dict[str, torch.Tensor]:
    """The encoder tensors of a ``.nemo`` file under ParakeetEncoder names."""
    _, state = _members(Path(path))
    out = {}
    for key, value in state.items():
        if not key.startswith("encoder."):
            continue  # decoder, joint, preprocessor featurizer buffers
        out[nemo_encoder_name(key[len("encoder."):])] = value
    return out
