"""Kaldi log-mel filterbanks in torch, equal to ``torchaudio.compliance.kaldi.fbank`` (not a dependency here).

The recipe (``snip_edges=True``, no dither, ``use_energy=False``): frames of 25 ms every 10 ms (only whole frames), per
frame: remove the DC offset, pre-emphasis ``x[i] - 0.97 x[i-1]`` (``x[-1] := x[0]``), window (``povey`` = symmetric
Hann ** 0.85, or ``hanning``), zero-pad to the next power of two, power spectrum, Kaldi's triangular mel filters
(triangles in mel space ``1127 ln(1 + f / 700)``, 20 Hz .. Nyquist; the Nyquist bin gets weight 0), then
``log(max(energy, float32 eps))``. Every frame depends on its own samples only, so a clip's frames are the same alone
or inside a zero-padded batch row.
"""

from __future__ import annotations

import functools
import math

import torch

EPSILON = torch.finfo(torch.float32).eps


def num_frames(num_samples: int | torch.Tensor, frame_length: int = 400, frame_shift: int = 160):
    """Whole frames in ``num_samples`` (``snip_edges``): 0 when shorter than one frame."""
    if isinstance(num_samples, torch.Tensor):
        return torch.where(num_samples < frame_length, 0, 1 + (num_samples - frame_length) // frame_shift)
    return 0 if num_samples < frame_length else 1 + (num_samples - frame_length) // frame_shift


def _mel(freq):
    return 1127.0 * torch.log(1.0 + freq / 700.0)


@functools.lru_cache(maxsize=8)
def mel_banks(num_bins: int, padded_window: int, sample_rate: float, low_freq: float = 20.0,
              high_freq: float = 0.0) -> torch.Tensor:
    """``[num_bins, padded_window // 2 + 1]`` float32 filters, computed as torchaudio's ``get_mel_banks``."""
    nyquist = 0.5 * sample_rate
    high_freq = high_freq + nyquist if high_freq <= 0.0 else high_freq
    mel_low, mel_high = 1127.0 * math.log(1.0 + low_freq / 700.0), 1127.0 * math.log(1.0 + high_freq / 700.0)
    delta = (mel_high - mel_low) / (num_bins + 1)
    bins = torch.arange(num_bins).unsqueeze(1)
    left, center, right = mel_low + bins * delta, mel_low + (bins + 1.0) * delta, mel_low + (bins + 2.0) * delta
    mel = _mel(sample_rate / padded_window * torch.arange(padded_window // 2)).unsqueeze(0)
    up, down = (mel - left) / (center - left), (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1))  # the Nyquist bin is outside every triangle in Kaldi


def fbank(waveform: torch.Tensor, num_mel_bins: int = 23, sample_rate: int = 16000, frame_length_ms: float = 25.0,
          frame_shift_ms: float = 10.0, window_type: str = "povey", preemphasis: float = 0.97,
          low_freq: float = 20.0, high_freq: float = 0.0) -> torch.Tensor:
    """``waveform [S]`` or ``[B, S]`` -> log-mel ``[F, num_mel_bins]`` or ``[B, F, num_mel_bins]`` (float32).

    ``F = 1 + (S - frame_length) // frame_shift``; ``S`` must hold one frame.
    """
    squeeze = waveform.dim() == 1
    wave = waveform.float().reshape(-1, waveform.shape[-1])
    size, shift = int(sample_rate * frame_length_ms * 0.001), int(sample_rate * frame_shift_ms * 0.001)
    if wave.shape[-1] < size:
        raise ValueError(f"kaldi fbank: {wave.shape[-1]} samples are fewer than one {frame_length_ms:g} ms frame "
                         f"({size} samples)")
    frames = wave.unfold(-1, size, shift)  # [B, F, size]
    frames = frames - frames.mean(dim=-1, keepdim=True)
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = frames - preemphasis * previous
    window = torch.hann_window(size, periodic=False, device=wave.device, dtype=torch.float32)
    if window_type == "povey":
        window = window.pow(0.85)
    elif window_type != "hanning":
        raise ValueError(f"kaldi fbank: window_type {window_type!r} is not implemented (povey, hanning)")
    padded = 1 << (size - 1).bit_length()
    spectrum = torch.fft.rfft(frames * window, n=padded).abs().pow(2.0)
    banks = mel_banks(num_mel_bins, padded, float(sample_rate), low_freq, high_freq).to(wave.device)
    energies = torch.clamp(spectrum @ banks.T, min=EPSILON).log()
    return energies[0] if squeeze else energies
