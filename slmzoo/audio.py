"""Reading audio: any format libsndfile reads (wav, flac, ogg, mp3), any rate, mono or stereo."""

from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np


class AudioError(ValueError):
    """An audio file or array that cannot be used; the message names the file."""


def read_audio(path: str | os.PathLike, sampling_rate: int = 16000, offset: float = 0.0,
               duration: float | None = None) -> np.ndarray:
    """Mono float32 waveform at ``sampling_rate``: channels are averaged, the rate is resampled."""
    import soundfile as sf

    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError(f"{path}: no such audio file")
    try:
        with sf.SoundFile(path) as f:
            rate = f.samplerate
            start = int(round(offset * rate))
            if start:
                f.seek(start)
            frames = -1 if duration is None else int(round(duration * rate))
            data = f.read(frames=frames, dtype="float32", always_2d=True)
    except Exception as error:  # soundfile raises several types; all mean "unreadable"
        data, rate = _read_with_audioread(path, error, offset, duration)
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if wave.size == 0:
        raise AudioError(f"{path}: the audio is empty")
    if not np.isfinite(wave).all():
        raise AudioError(f"{path}: the audio has NaN or infinite samples")
    return resample(wave, rate, sampling_rate)


def _read_with_audioread(path: str, first_error: Exception, offset: float, duration: float | None):
    try:
        import audioread
    except ImportError:
        raise AudioError(f"{path}: cannot read audio ({first_error})") from None
    try:
        with audioread.audio_open(path) as f:
            rate, channels = f.samplerate, f.channels
            pcm = b"".join(f)
    except Exception:
        raise AudioError(f"{path}: cannot read audio ({first_error})") from None
    data = np.frombuffer(pcm, dtype="<i2").astype(np.float32).reshape(-1, channels) / 32768.0
    start = int(round(offset * rate))
    stop = None if duration is None else start + int(round(duration * rate))
    return data[start:stop], rate


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (scipy), exact for rational rate ratios."""
    if rate == target:
        return np.ascontiguousarray(wave, dtype=np.float32)
    from scipy.signal import resample_poly

    ratio = Fraction(target, rate).limit_denominator(1000)
    out = resample_poly(wave, ratio.numerator, ratio.denominator)
    return out.astype(np.float32)


def as_waveform(item, sampling_rate: int, source_rate: int | None = None, name: str = "audio") -> np.ndarray:
    """A path or a 1-D array-like (numpy, torch, list) -> mono float32 numpy at ``sampling_rate``."""
    if isinstance(item, (str, os.PathLike)):
        return read_audio(item, sampling_rate)
    if hasattr(item, "detach"):
        item = item.detach().cpu().float().numpy()
    wave = np.asarray(item, dtype=np.float32)
    if wave.ndim == 2 and min(wave.shape) <= 8:  # [C, S] or [S, C]: average the channels
        wave = wave.mean(axis=0 if wave.shape[0] <= wave.shape[1] else 1)
    if wave.ndim != 1:
        raise AudioError(f"{name}: expected a 1-D waveform, got shape {tuple(wave.shape)}")
    if wave.size == 0:
        raise AudioError(f"{name}: the waveform is empty")
    if not np.isfinite(wave).all():
        raise AudioError(f"{name}: the waveform has NaN or infinite samples")
    return resample(wave, source_rate or sampling_rate, sampling_rate)


def pad_waveforms(waves):
    """List of 1-D arrays -> ``audio [N, S]`` float32 zero-padded on the right and ``lengths [N]``."""
    import torch

    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    audio = torch.zeros(len(waves), int(lengths.max()) if len(waves) else 0)
    for i, w in enumerate(waves):
        audio[i, : len(w)] = torch.as_tensor(w)
    return audio, lengths


def duration_of(num_samples: int, sampling_rate: int) -> float:
    return num_samples / sampling_rate if sampling_rate else math.nan
