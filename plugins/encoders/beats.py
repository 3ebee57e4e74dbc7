"""``beats``: Microsoft BEATs (Chen et al. 2022, microsoft/unilm ``beats/``) on raw 16 kHz waveforms, 50 tokens/s.

No transformers implementation exists; this one follows the official ``BEATs.py`` + ``backbone.py`` and uses their
module names, so official checkpoints (``BEATs_iter3_plus_AS2M.pt``: ``{'cfg': {...}, 'model': state_dict}``) load
strictly as they are:

- features: 128-bin Kaldi fbank of ``wave * 2**15`` (povey window, 25/10 ms), normalised ``(x - 15.41663) / (2 *
  6.55582)``; ``patch_embedding`` Conv2d 16x16 stride 16 over ``[frames, 128]``; ``layer_norm``; ``post_extract_proj``.
- tokens are time-major: 8 frequency patches per 16 fbank frames (160 ms), i.e. ``100 / 16 * 8 = 50`` tokens per second,
  the layout ``extract_features`` returns. SALMONN concatenates these tokens with Whisper's 50 Hz frames one for
  one (padding the shorter), so declaring 50 tokens/s lines them up with Whisper in ``multi`` the same way.
- ``encoder.pos_conv``: grouped Conv1d with weight norm (``weight_g``/``weight_v``), SamePad, GELU; post-LN
  transformer layers with deep-norm residual scaling, bucketed relative position bias computed by layer 0 and passed
  on (layers 1.. share layer 0's table), gated by the query (``gru_rel_pos``: ``grep_linear``, ``grep_a``).

Padding: the official ``forward_padding_mask`` calls a patch padded only when all its samples are padding, so a
clip's last partial patch sees padded fbank frames and its output depends on the batch. Here a clip has exactly the
``num_frames // 16`` time patches it has alone (the Conv2d drops the partial patch of a lone clip too); padded tokens
are zeroed before ``pos_conv`` (as the official code does) and masked as attention keys. A clip alone == in a batch.

A fine-tuned checkpoint's AudioSet classifier (``predictor.*``, present when ``cfg.finetuned_model``) is the one
thing dropped: it is a head outside the encoder. Any other missing or unexpected key is an error naming it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from slmzoo.components import Encoder, EncoderOutput, key_padding_bias, lengths_to_mask
from slmzoo.errors import PretrainedLoadError
from slmzoo_plugins.encoders.kaldi_fbank import fbank, num_frames
from slmzoo_plugins.encoders.layer_selection import LayerSelection
from slmzoo_plugins.encoders.waveforms import SAMPLING_RATE, check_waveforms

FBANK_MEAN, FBANK_STD = 15.41663, 6.55582
NUM_MEL_BINS = 128

# The official BEATsConfig defaults; a checkpoint's 'cfg' (or the inline config) updates them.
DEFAULT_CONFIG = dict(
    input_patch_size=-1, embed_dim=512, conv_bias=False, encoder_layers=12, encoder_embed_dim=768,
    encoder_ffn_embed_dim=3072, encoder_attention_heads=12, activation_fn="gelu", layer_wise_gradient_decay_ratio=1.0,
    layer_norm_first=False, deep_norm=False, dropout=0.1, attention_dropout=0.1, activation_dropout=0.0,
    encoder_layerdrop=0.0, dropout_input=0.0, conv_pos=128, conv_pos_groups=16, relative_position_embedding=False,
    num_buckets=320, max_distance=1280, gru_rel_pos=False, finetuned_model=False, predictor_dropout=0.1,
    predictor_class=527,
)


def beats_config(fields: dict | None) -> dict:
    """The official defaults updated with ``fields``; unknown fields are an error (a typo would be silently unused)."""
    unknown = sorted(set(fields or {}) - set(DEFAULT_CONFIG))
    if unknown:
        raise PretrainedLoadError(f"encoder.config: unknown BEATs config field(s) {', '.join(unknown)}; "
                             f"known: {', '.join(DEFAULT_CONFIG)}")
    config = {**DEFAULT_CONFIG, **(fields or {})}
    if config["input_patch_size"] <= 0:
        raise PretrainedLoadError("encoder.config: input_patch_size must be set (16 in every released BEATs)")
    if config["deep_norm"] and config["layer_norm_first"]:
        raise PretrainedLoadError("encoder.config: deep_norm and layer_norm_first exclude each other (as in BEATs)")
    if config["activation_fn"] not in ("gelu", "relu"):
        raise PretrainedLoadError(f"encoder.config: activation_fn {config['activation_fn']!r} is not supported "
                             "(gelu, relu)")
    return config


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bidirectional T5-style buckets of ``key - query`` offsets, as ``MultiheadAttention._relative_positions_bucket``:
    half the buckets per direction, exact below ``num_buckets // 4``, log-spaced up to ``max_distance``."""
    num_buckets //= 2
    buckets = (relative_position > 0).long() * num_buckets
    distance = relative_position.abs()
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class WeightNormConv1d(nn.Module):
    """``nn.utils.weight_norm(Conv1d, dim=2)`` with the same parameter names (``weight_g [1, 1, K]``, ``weight_v``),
    so official checkpoints load without the deprecated hook or parametrization renames."""

    def __init__(self, channels: int, kernel_size: int, groups: int):
        super().__init__()
        self.padding, self.groups = kernel_size // 2, groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel_size))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.normal_(self.weight_v, std=math.sqrt(4.0 / (kernel_size * channels)))
        with torch.no_grad():
            self.weight_g.copy_(self.weight_v.norm(dim=(0, 1), keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, T]`` -> ``[B, C, T + 1 - K % 2]`` (the caller's SamePad trims)."""
        weight = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
        return nn.functional.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


class SamePad(nn.Module):
    def __init__(self, kernel_size: int):
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : -self.remove] if self.remove else x


class BEATsAttention(nn.Module):
    """Self-attention with the (gated) relative position bias. Official names: ``q_proj``, ``k_proj``, ``v_proj``,
    ``out_proj``, ``relative_attention_bias``, ``grep_linear``, ``grep_a``."""

    def __init__(self, config: dict, has_relative_attention_bias: bool):
        super().__init__()
        dim, self.num_heads = config["encoder_embed_dim"], config["encoder_attention_heads"]
        self.head_dim = dim // self.num_heads
        if self.head_dim * self.num_heads != dim:
            raise PretrainedLoadError("encoder.config: encoder_embed_dim must be divisible by encoder_attention_heads")
        self.num_buckets, self.max_distance = config["num_buckets"], config["max_distance"]
        self.dropout = config["attention_dropout"]
        self.k_proj, self.v_proj, self.q_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(self.num_buckets, self.num_heads)
        self.gru_rel_pos = config["gru_rel_pos"]
        if self.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, self.num_heads, 1, 1))

    def compute_bias(self, length: int) -> torch.Tensor:
        """``[H, T, T]`` bias indexed by bucket of ``key - query``."""
        position = torch.arange(length, device=self.relative_attention_bias.weight.device)
        buckets = relative_position_bucket(position[None, :] - position[:, None], self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)

    def gate(self, query: torch.Tensor) -> torch.Tensor:
        """``query [B, H, T, d]`` (unscaled q_proj output) -> per-query bias scale ``[B, H, T, 1]``:
        ``a * (b * grep_a - 1) + 2`` with ``a, b = sigmoid(sum of 4 of grep_linear(q))``."""
        B, H, T, _ = query.shape
        gate_a, gate_b = torch.sigmoid(self.grep_linear(query).view(B, H, T, 2, 4).sum(-1)).chunk(2, dim=-1)
        return gate_a * (gate_b * self.grep_a - 1.0) + 2.0

    def forward(self, hidden: torch.Tensor, key_bias: torch.Tensor | None,
                position_bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``hidden [B, T, C]``, ``key_bias [B, 1, 1, T]`` (0 / dtype min), ``position_bias [H, T, T]`` from the layer
        before (computed here when None and this layer has a table). Returns the output and the ungated bias."""
        B, T, C = hidden.shape
        if position_bias is None and hasattr(self, "relative_attention_bias"):
            position_bias = self.compute_bias(T)
        q, k, v = (proj(hidden).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        bias = key_bias
        if position_bias is not None:
            rel = position_bias[None].to(q.dtype)
            if self.gru_rel_pos:
                rel = self.gate(q) * rel
            bias = rel if bias is None else rel + bias
        # The official max-subtraction and alpha=32 rescaling are for fp16 range only: softmax is shift-invariant.
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                                         dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, C)), position_bias


class BEATsLayer(nn.Module):
    """``TransformerSentenceEncoderLayer``: post-LN (deep-norm scales the residual by ``(2N) ** 0.25``) or pre-LN."""

    def __init__(self, config: dict, has_relative_attention_bias: bool):
        super().__init__()
        dim = config["encoder_embed_dim"]
        self.self_attn = BEATsAttention(config, has_relative_attention_bias)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, config["encoder_ffn_embed_dim"])
        self.fc2 = nn.Linear(config["encoder_ffn_embed_dim"], dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.activation = nn.functional.gelu if config["activation_fn"] == "gelu" else nn.functional.relu
        self.layer_norm_first = config["layer_norm_first"]
        self.alpha = math.pow(2 * config["encoder_layers"], 0.25) if config["deep_norm"] else 1.0
        self.dropout, self.activation_dropout = config["dropout"], config["activation_dropout"]

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        drop = nn.functional.dropout
        x = drop(self.activation(self.fc1(x)), self.activation_dropout, self.training)
        return drop(self.fc2(x), self.dropout, self.training)

    def forward(self, x, key_bias, position_bias):
        drop = nn.functional.dropout
        if self.layer_norm_first:
            attn, position_bias = self.self_attn(self.self_attn_layer_norm(x), key_bias, position_bias)
            x = x + drop(attn, self.dropout, self.training)
            return x + self._ffn(self.final_layer_norm(x)), position_bias
        attn, position_bias = self.self_attn(x, key_bias, position_bias)
        x = self.self_attn_layer_norm(x * self.alpha + drop(attn, self.dropout, self.training))
        return self.final_layer_norm(x * self.alpha + self._ffn(x)), position_bias


class BEATsTransformer(nn.Module):
    """``backbone.TransformerEncoder``: conv positions, layer norm, layers."""

    def __init__(self, config: dict):
        super().__init__()
        dim, kernel = config["encoder_embed_dim"], config["conv_pos"]
        self.pos_conv = nn.Sequential(WeightNormConv1d(dim, kernel, config["conv_pos_groups"]), SamePad(kernel),
                                      nn.GELU())
        relative = config["relative_position_embedding"]
        self.layers = nn.ModuleList(BEATsLayer(config, relative) for _ in range(config["encoder_layers"]))
        if relative:  # one table, owned by layer 0, listed under every layer as in the official state dict
            for layer in self.layers[1:]:
                del layer.self_attn.relative_attention_bias
                layer.self_attn.relative_attention_bias = self.layers[0].self_attn.relative_attention_bias
        self.layer_norm = nn.LayerNorm(dim)
        self.layer_norm_first = config["layer_norm_first"]
        self.dropout, self.layerdrop = config["dropout"], config["encoder_layerdrop"]

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, keep_all: bool) -> list[torch.Tensor]:
        """``x [B, T, C]``, ``lengths [B]`` tokens -> ``[B, T, C]`` states: ``num_layers + 1`` of them (input after
        positions, then each layer; the final norm of pre-LN models on the last) or only the last."""
        T = x.shape[1]
        mask = lengths_to_mask(lengths, T)
        x = x * mask[..., None].to(x.dtype)  # the official x[padding_mask] = 0: pos_conv sees zeros past the clip
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = nn.functional.dropout(x, self.dropout, self.training)
        # No mask when nothing is padded.
        key_bias = key_padding_bias(lengths, T, x.dtype) if bool((lengths < T).any()) else None
        states, position_bias = [x] if keep_all else [], None
        for layer in self.layers:
            if not (self.training and self.layerdrop > 0 and torch.rand([]) < self.layerdrop):
                x, position_bias = layer(x, key_bias, position_bias)
            if keep_all:
                states.append(x)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return states[:-1] + [x] if keep_all else [x]


class BEATsModel(nn.Module):
    """The official ``BEATs`` module without its classifier: fbank ``[B, F, 128]`` -> tokens."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        patch, embed, dim = config["input_patch_size"], config["embed_dim"], config["encoder_embed_dim"]
        self.post_extract_proj = nn.Linear(embed, dim) if embed != dim else None
        self.patch_embedding = nn.Conv2d(1, embed, kernel_size=patch, stride=patch, bias=config["conv_bias"])
        self.encoder = BEATsTransformer(config)
        self.layer_norm = nn.LayerNorm(embed)
        self.dropout_input = config["dropout_input"]
        self.encoder.apply(_init_bert_params)

    def forward(self, fbanks: torch.Tensor, frame_lengths: torch.Tensor, keep_all: bool = False):
        """``fbanks [B, F, 128]`` normalised, ``frame_lengths [B]`` -> (states ``[B, N, C]``, token lengths ``[B]``)."""
        patches = self.patch_embedding(fbanks.unsqueeze(1))  # [B, E, F // 16, 128 // 16]
        per_step = patches.shape[-1]
        x = self.layer_norm(patches.flatten(2).transpose(1, 2))  # time-major: t * 8 + f
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        x = nn.functional.dropout(x, self.dropout_input, self.training)
        lengths = frame_lengths // self.config["input_patch_size"] * per_step
        return self.encoder(x, lengths, keep_all), lengths


def _init_bert_params(module: nn.Module) -> None:
    """The official random initialisation of the transformer (``init_bert_params``) for inline-config builds."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def load_checkpoint(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(cfg, state_dict)`` of an official BEATs ``.pt`` (a dict with 'cfg' and 'model'); tensors only."""
    if not Path(path).is_file():
        raise PretrainedLoadError(f"encoder.pretrained: {path!r} is not a file; give the official BEATs .pt checkpoint "
                             "(e.g. BEATs_iter3_plus_AS2M.pt)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise PretrainedLoadError(f"encoder.pretrained: cannot read {path!r} ({error})") from None
    if not isinstance(checkpoint, dict) or "cfg" not in checkpoint or "model" not in checkpoint:
        raise PretrainedLoadError(f"encoder.pretrained: {path!r} is not a BEATs checkpoint (a dict with 'cfg' and 'model')")
    return dict(checkpoint["cfg"]), checkpoint["model"]


def load_strict(model: BEATsModel, state: dict[str, torch.Tensor], source: str) -> None:
    """Every weight of ``model`` from ``state``, nothing left over but the classifier head; errors name keys."""
    expected = model.state_dict()
    if model.config["finetuned_model"]:  # the AudioSet classifier: a head outside the encoder
        state = {k: v for k, v in state.items() if not k.startswith("predictor.")}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(f"{k} {tuple(state[k].shape)} (model {tuple(v.shape)})" for k, v in expected.items()
                   if k in state and state[k].shape != v.shape)
    problems = ([f"missing weight(s): {', '.join(missing)}"] if missing else []) + (
        [f"unexpected weight(s): {', '.join(unexpected)}"] if unexpected else []) + (
        [f"shape mismatch: {', '.join(wrong)}"] if wrong else [])
    if problems:
        raise PretrainedLoadError(f"encoder.pretrained {source!r} does not fit BEATs: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


class BEATsEncoder(Encoder):
    """Waveforms ``[B, S]`` at 16 kHz -> BEATs tokens ``[B, N, C]``, ``N = (frames // 16) * 8``, 50 tokens/s."""

    sampling_rate = SAMPLING_RATE

    def __init__(self, options, context):
        super().__init__()
        state = None
        if options.pretrained is not None and not (context.from_config and options.config is not None):
            cfg, state = load_checkpoint(options.pretrained)
            config = beats_config({**cfg, **(options.config or {})})
        elif options.config is not None:
            config = beats_config(options.config)
        else:
            raise PretrainedLoadError("encoder: give pretrained (an official BEATs .pt) or an inline config")
        self.model = BEATsModel(config)
        if state is not None and not context.from_config:
            load_strict(self.model, state, options.pretrained)
        patch = config["input_patch_size"]
        self.patch = patch
        self.min_samples = 400 + (patch - 1) * 160  # one patch needs `patch` whole 25 ms frames
        self.output_dim = config["encoder_embed_dim"]
        self.frame_rate = 100.0 / patch * (NUM_MEL_BINS // patch)  # 50.0 for 16x16 patches
        self.selection = LayerSelection(options.layer, config["encoder_layers"])
        self.stacks_layers = self.selection.stacks_layers

    def standalone_options(self) -> dict:
        return {"config": dict(self.model.config)}  # the official BEATsConfig fields, complete

    def _check(self, audio: torch.Tensor, lengths: torch.Tensor) -> None:
        check_waveforms(audio, lengths, self.min_samples, "beats encoder", unit=f"one {self.patch}-frame patch")

    def features(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``audio [B, S]`` -> normalised fbank ``[B, F, 128]`` float32 and whole-frame counts ``[B]``.

        Frames are local (25 ms each), so frames inside a clip are the same as for the clip alone."""
        frame_lengths = num_frames(lengths)
        waves = audio[:, : int(lengths.max())].float() * lengths_to_mask(lengths)  # whatever the caller padded with
        feats = fbank(waves * 2**15, num_mel_bins=NUM_MEL_BINS, sample_rate=SAMPLING_RATE, window_type="povey")
        return (feats - FBANK_MEAN) / (2 * FBANK_STD), frame_lengths

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """``audio [B, S]`` zero-padded, ``lengths [B]`` samples -> ``hidden [B, N, C]`` (``[B, L+1, N, C]`` for
        ``layer: all``), ``lengths [B]`` tokens; padded tokens zeroed."""
        self._check(audio, lengths)
        feats, frame_lengths = self.features(audio, lengths)
        states, out_lengths = self.model(feats.to(self.model.layer_norm.weight.dtype), frame_lengths,
                                         keep_all=self.selection.needs_all_states)
        hidden = self.selection(states)
        mask = lengths_to_mask(out_lengths, hidden.shape[-2]).to(hidden.dtype)
        hidden = hidden * (mask[:, None, :, None] if hidden.dim() == 4 else mask[..., None])
        return EncoderOutput(hidden=hidden, lengths=out_lengths)
