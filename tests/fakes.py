"""Tiny stand-in components for fast tests of data, training and evaluation (not registered by default).

``fake_frames``: 10 ms frames of raw samples -> Linear -> GELU -> Linear, padded frames zeroed (no cross-frame
mixing, so padding can never leak). ``fake_linear``: a linear map into the LLM width.
"""

from __future__ import annotations

from torch import nn

from slmzoo import hookimpl
from slmzoo.components import Adapter, AdapterOutput, Encoder, EncoderOutput, zero_padding
from slmzoo.registry import ComponentOptions, ComponentSpec

HOP = 160


class FakeOptions(ComponentOptions):
    pass


class FrameEncoder(Encoder):
    def __init__(self, options=None, context=None):
        super().__init__()
        # Dropout makes resume tests check that the torch RNG state is restored too.
        self.net = nn.Sequential(nn.Linear(HOP, 32), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, 32))
        self.output_dim, self.frame_rate = 32, 16000 / HOP

    def forward(self, audio, lengths):
        """``audio [B, S]`` -> ``hidden [B, S // 160, 32]``."""
        frames = audio.shape[1] // HOP
        x = audio[:, : frames * HOP].reshape(audio.shape[0], frames, HOP)
        lens = lengths // HOP
        return EncoderOutput(zero_padding(self.net(x), lens), lens)


class LinearAdapter(Adapter):
    def __init__(self, options, context):
        super().__init__()
        self.proj = nn.Linear(context.encoder_dim, context.llm_dim)
        self.output_dim = context.llm_dim

    def forward(self, hidden, lengths):
        return AdapterOutput(zero_padding(self.proj(hidden), lengths), lengths)


@hookimpl
def slmzoo_register_components(register):
    register(ComponentSpec(kind="encoder", name="fake_frames", description="test encoder", options=FakeOptions,
                           factory="tests.fakes:FrameEncoder"))
    register(ComponentSpec(kind="adapter", name="fake_linear", description="test adapter", options=FakeOptions,
                           factory="tests.fakes:LinearAdapter"))


FAKE_OVERRIDES = ["encoder.type=fake_frames", "adapter.type=fake_linear"]


def register_fakes() -> None:
    """Register the fake components once per process (idempotent)."""
    from slmzoo.plugins import host, register_plugin

    if "slmzoo-fakes" not in host().plugins:
        import tests.fakes as module

        register_plugin(module, "slmzoo-fakes")


def tiny_model_card(*overrides: str):
    """The salm tiny preset with the fake encoder and adapter: builds in well under a second."""
    import slmzoo

    register_fakes()
    return slmzoo.load_card("salm", preset="tiny", overrides=[*FAKE_OVERRIDES, *overrides])


WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_corpus(folder, n: int = 12, seed: int = 0, name: str = "train.jsonl", extra: list[dict] | None = None):
    """``n`` short random clips (0.3-0.9 s, 16 kHz FLAC) and a NeMo manifest with relative paths.

    Returns the manifest path; ``extra`` lines are appended as given (bad items for tests).
    """
    import json
    from pathlib import Path

    import numpy as np
    import soundfile as sf

    folder = Path(folder)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        samples = int(16000 * rng.uniform(0.3, 0.9))
        wave = (0.1 * rng.standard_normal(samples)).astype("float32")
        sf.write(folder / "audio" / f"u{i:03d}.flac", wave, 16000)
        text = " ".join(WORDS[d] for d in rng.integers(0, 10, size=int(rng.integers(1, 4))))
        lines.append({"id": f"u{i:03d}", "audio_filepath": f"audio/u{i:03d}.flac", "duration": samples / 16000,
                      "text": text})
    lines += extra or []
    path = folder / name
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path
