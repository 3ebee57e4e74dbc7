"""Feature post-processing shared by encoders: which hidden states reach the adapter."""

from __future__ import annotations

import torch
from torch import nn


class LayerSelection(nn.Module):
    """Pick or mix encoder layers.

    ``layer``: ``"last"``; an int index into ``hidden_states`` (0 = embeddings, ``num_layers`` = last,
    negative from the end); ``"weighted"``: softmax-weighted sum with learned weights (SUPERB style,
    initialised uniform); ``"all"``: every layer stacked ``[B, L+1, T, C]``.
    """

    def __init__(self, layer: str | int, num_layers: int):
        super().__init__()
        self.layer = layer
        self.num_layers = num_layers
        if isinstance(layer, int) and not -(num_layers + 1) <= layer <= num_layers:
            raise ValueError(f"layer={layer} is out of range for an encoder of {num_layers} layers "
                             f"(0 = embeddings ... {num_layers} = last, or negative from the end)")
        if layer == "weighted":
            self.layer_weights = nn.Parameter(torch.zeros(num_layers + 1))

    @property
    def needs_all_states(self) -> bool:
        return self.layer != "last"

    @property
    def stacks_layers(self) -> bool:
        return self.layer == "all"

    def forward(self, hidden_states: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> torch.Tensor:
        """``hidden_states``: ``num_layers + 1`` tensors ``[B, T, C]`` -> ``[B, T, C]`` or ``[B, L+1, T, C]``."""
        if self.layer == "last":
            return hidden_states[-1]
        if isinstance(self.layer, int):
            return hidden_states[self.layer]
        stacked = torch.stack(list(hidden_states), dim=1)
        if self.layer == "all":
            return stacked
        weights = torch.softmax(self.layer_weights, dim=0).to(stacked.dtype)
        return torch.einsum("l,bltc->btc", weights, stacked)
