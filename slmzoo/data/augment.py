"""Waveform augmentation for training: speed perturbation (Lhotse, per cut), gain, white noise, and
SpecAugment-style masking done on the waveform.

Why masks on the waveform: encoders compute their own features (Whisper's log-mel), so the masks are
applied before them, encoder-agnostic: a time mask zeroes a span of samples, a frequency mask removes a
band (chosen on the mel scale, as SpecAugment masks mel channels) in the FFT domain.
Every random draw comes from a generator seeded by (seed, batch index): a batch is augmented the same
way whichever DataLoader worker builds it, and again after ``--resume``.
"""

from __future__ import annotations

import numpy as np

TIME_MASKS, TIME_MASK_MAX = 2, 0.08  # two masks, each up to 8% of the clip
FREQ_MASKS, FREQ_MASK_MAX = 2, 0.12  # two bands, each up to 12% of the mel range (SpecAugment LD: F=27/80 per 2)


def pick_speed(factors: list[float], rng: np.random.Generator) -> float:
    """A factor from ``factors`` plus the unperturbed 1.0, uniformly."""
    choices = sorted({1.0, *factors})
    return float(choices[rng.integers(len(choices))])


def _mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)


def _hz(m):
    return 700.0 * (10 ** (np.asarray(m) / 2595.0) - 1.0)


def spec_augment(wave: np.ndarray, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
    """``wave [S]`` -> ``[S]`` with ``FREQ_MASKS`` bands removed and ``TIME_MASKS`` spans zeroed."""
    from scipy.fft import irfft, next_fast_len, rfft

    n = len(wave)
    # Zero-padded to a length with small prime factors: clip lengths are arbitrary, and an FFT of a
    # length with a large prime factor is ~10x slower (a third of a CPU training step on the digits recipe).
    size = next_fast_len(n, real=True)
    spectrum = rfft(wave, n=size)
    top = _mel(sampling_rate / 2)
    for _ in range(FREQ_MASKS):
        width = rng.uniform(0, FREQ_MASK_MAX) * top
        lo = rng.uniform(0, top - width)
        lo_bin, hi_bin = (np.asarray(_hz([lo, lo + width])) / (sampling_rate / 2) * (len(spectrum) - 1)).astype(int)
        spectrum[lo_bin:hi_bin + 1] = 0
    out = irfft(spectrum, n=size)[:n].astype(np.float32)
    for _ in range(TIME_MASKS):
        width = int(rng.uniform(0, TIME_MASK_MAX) * n)
        start = int(rng.integers(0, max(1, n - width)))
        out[start:start + width] = 0.0
    return out


def augment_waveform(wave: np.ndarray, config, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Gain, noise and masks from an :class:`~slmzoo.card.schema.AugmentConfig`; ``wave [S]`` float32."""
    if config.volume is not None:
        wave = wave * np.float32(10 ** (rng.uniform(*config.volume) / 20))
    if config.noise_snr is not None and rng.random() < config.noise_prob:
        power = float(np.mean(wave ** 2)) + 1e-10
        snr = rng.uniform(*config.noise_snr)
        noise = rng.standard_normal(len(wave)).astype(np.float32) * np.float32(np.sqrt(power / 10 ** (snr / 10)))
        wave = wave + noise
    if config.spec_augment:
        wave = spec_augment(wave, sampling_rate, rng)
    return wave.astype(np.float32, copy=False)
