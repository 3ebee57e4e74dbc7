"""Whisper log-mel features in torch, identical to transformers' ``WhisperFeatureExtractor``.

The feature extractor's recipe: STFT (n_fft 400, hop 160, hann, centred with reflect padding), drop the last
frame, power spectrum, slaney mel filters, ``log10(max(mel, 1e-10))``, clamp to 8 below the clip's maximum,
``(x + 4) / 4``. Computed here on the encoder's device, per clip, so a clip's features never depend on its batch.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from slmzoo_plugins.encoders.waveforms import SAMPLING_RATE

N_FFT = 400
HOP_LENGTH = 160


@functools.lru_cache(maxsize=4)
def mel_filters(num_mel_bins: int) -> np.ndarray:
    """``[1 + n_fft // 2, num_mel_bins]`` float64: the same call ``WhisperFeatureExtractor.__init__`` makes."""
    from transformers.audio_utils import mel_filter_bank

    return mel_filter_bank(num_frequency_bins=1 + N_FFT // 2, num_mel_filters=num_mel_bins, min_frequency=0.0,
                           max_frequency=8000.0, sampling_rate=SAMPLING_RATE, norm="slaney", mel_scale="slaney")


def log_mel(audio: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """``audio [B, S]`` (or ``[S]``) -> ``[B, n_mels, S // 160]`` float32 log-mel (or ``[n_mels, S // 160]``).

    Every row is one whole clip: the ``max - 8`` clamp runs over that row, so pass a clip's own samples (variable
    length) or the clip padded to the 30 s window (``pad_to_window``), never a batch-padded row.
    ``S`` must exceed ``n_fft // 2`` (reflect padding).
    """
    audio = audio.float()
    window = torch.hann_window(N_FFT, device=audio.device)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    # The last frame is dropped as in the feature extractor; contiguous keeps the matmul on its fast path.
    magnitudes = (stft[..., :-1].abs() ** 2).contiguous()
    log_spec = torch.clamp(filters.float().T @ magnitudes, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.amax(dim=(-2, -1), keepdim=True) - 8.0)
    return (log_spec + 4.0) / 4.0
