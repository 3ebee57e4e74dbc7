"""The contract of the ``vocoder`` kind: discrete speech units in, a waveform out."""

from __future__ import annotations

import torch

from slmzoo.components import Component


class Vocoder(Component):
    """A frozen unit vocoder. Subclasses set ``num_units`` (the unit vocabulary it reads), ``sampling_rate`` and
    ``hop_length`` (samples per unit frame); the model keeps it in eval mode and never trains it."""

    num_units: int
    sampling_rate: int
    hop_length: int

    def frames(self, units: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``units [B, T]``, ``lengths [B]`` -> ``[B]``: the unit frames each item's speech lasts (a unit is one
        frame, or as many as its predicted duration); the waveform has ``frames * hop_length`` samples."""
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(self, units: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``units [B, T]`` (long, in ``[0, num_units)`` up to each length), ``lengths [B]`` -> ``audio [B, S]``
        (zero-padded, at ``sampling_rate``) and its ``lengths [B]`` in samples."""
        raise NotImplementedError  # pragma: no cover - abstract

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: dropout stays off
