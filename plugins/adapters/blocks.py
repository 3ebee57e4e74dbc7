"""Pieces several adapters share: activations, a key-padding-masked transformer, masked pooling over time."""

from __future__ import annotations

import torch
from torch import nn

from slmzoo.components import lengths_to_mask, zero_padding


class SwiGLU(nn.Module):
    """``[..., 2H] -> [..., H]``: ``x * silu(gate)`` with ``x, gate`` the two halves, as in Ultravox."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x, gate = hidden.chunk(2, dim=-1)
        return x * nn.functional.silu(gate)


ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "swiglu": SwiGLU}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MaskedTransformer(nn.Module):
    """Transformer encoder over ``[B, T, C]`` whose padded keys are masked, then a LayerNorm (``final_norm``).
    Pre-norm with GELU by default (Whisper's ``ResidualAttentionBlock`` layout); ``norm_first=False`` is the
    original post-norm layer ("Attention is all you need"). ``num_layers=0`` is the identity. Padded frames come
    out zeroed.
    """

    def __init__(self, dim: int, num_layers: int, num_heads: int, ff_dim: int | None = None, dropout: float = 0.0,
                 final_norm: bool = True, norm_first: bool = True, activation: str = "gelu", eps: float = 1e-5):
        super().__init__()
        self.num_layers = num_layers
        if num_layers == 0:
            return
        if dim % num_heads:
            raise ValueError(f"transformer width {dim} is not divisible by num_heads={num_heads}")
        layer = nn.TransformerEncoderLayer(dim, num_heads, ff_dim or 4 * dim, dropout, activation=activation,
                                           layer_norm_eps=eps, batch_first=True, norm_first=norm_first)
        # enable_nested_tensor would only apply to post-norm layers; off to keep one code path
        self.layers = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(dim) if final_norm else None,
                                            enable_nested_tensor=False)

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``hidden [B, T, C]``, ``lengths [B]`` (each >= 1) -> ``[B, T, C]``."""
        hidden = zero_padding(hidden, lengths)
        if self.num_layers == 0:
            return hidden
        padded = ~lengths_to_mask(lengths, hidden.shape[1])
        return zero_padding(self.layers(hidden, src_key_padding_mask=padded), lengths)


def masked_avg_pool(hidden: torch.Tensor, lengths: torch.Tensor, k: int, keep_partial: bool):
    """Average non-overlapping windows of ``k`` frames of ``hidden [B, T, ...]`` over real frames only.

    ``keep_partial=False``: a trailing window with fewer than ``k`` real frames is dropped (lengths ``n // k``,
    as ``AvgPool1d``); ``True``: it is kept as the mean of its real frames (lengths ``ceil(n / k)``).
    Returns ``pooled [B, T', ...]`` (padded windows zeroed) and ``lengths [B]``.
    """
    batch, frames = hidden.shape[:2]
    windows = -(-frames // k)
    hidden = zero_padding(hidden, lengths)
    hidden = nn.functional.pad(hidden, (0, 0) * (hidden.dim() - 2) + (0, windows * k - frames))
    sums = hidden.reshape(batch, windows, k, *hidden.shape[2:]).sum(2)
    counts = lengths_to_mask(lengths, windows * k).view(batch, windows, k).sum(2).clamp(min=1)
    pooled = sums / counts.view(batch, windows, *([1] * (hidden.dim() - 2))).to(hidden.dtype)
    if not keep_partial:
        pooled = pooled[:, : frames // k]
    new_lengths = -(-lengths // k) if keep_partial else lengths // k
    return zero_padding(pooled, new_lengths), new_lengths


def require_frames(name: str, context) -> None:
    """Adapters over ``[B, T, C]`` cannot take an encoder that returns all its layers ``[B, L, T, C]``."""
    if context.encoder_layers_stacked:
        raise ValueError(f"adapter {name}: the encoder returns all layers [B, L, T, C] (layer: all); pick one layer, "
                         "use layer: weighted, or use the tltr adapter")


def check_frames(name: str, hidden: torch.Tensor) -> None:
    if hidden.dim() != 3:
        raise ValueError(f"adapter {name}: expected encoder frames [B, T, C]; got {list(hidden.shape)}")


def sinusoidal_positions(length: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The fixed positional encoding of "Attention is all you need" ``[length, dim]``: ``sin`` on the even
    channels, ``cos`` on the odd ones, wavelengths from ``2 pi`` to ``10000 * 2 pi``."""
    position = torch.arange(length, device=device, dtype=torch.float64)[:, None]
    rates = 1.0 / 10000 ** (torch.arange(0, dim, 2, device=device, dtype=torch.float64) / dim)
    table = torch.zeros(length, dim, device=device, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * rates)
    table[:, 1::2] = torch.cos(position * rates[: dim // 2])
    return table.to(dtype)
