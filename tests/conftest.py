import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO.parent / "shared" / "data" / "digits"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def speechlike(seconds: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """A deterministic non-silent test signal: a chirp plus a little noise."""
    r = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.2 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.02 * r.standard_normal(t.size)
    return wave.astype(np.float32)
