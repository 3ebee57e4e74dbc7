"""Whisper encoder: variable length vs the 30 s window, per clip. Offline: random weights from an inline config.

    python benchmarks/bench_whisper_variable_length.py [--config tiny|base] [--repeats N] [--batch B] [--device D]

Prints milliseconds per clip (median of N runs, features included) for 2, 5 and 10 s clips in both modes and
the speed-up of variable length over ``pad_to_window``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from slmzoo.builder import BuildContext
from slmzoo_plugins.encoders.specs import WhisperOptions
from slmzoo_plugins.encoders.whisper import WhisperEncoder

CONFIGS = {
    "tiny": dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536, num_mel_bins=80),
    "base": dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048, num_mel_bins=80),
}


def time_per_clip(encoder: WhisperEncoder, audio: torch.Tensor, lengths: torch.Tensor, repeats: int) -> float:
    """Median milliseconds per clip of ``encoder(audio, lengths)``, one warm-up run first."""
    def sync():
        if audio.device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for i in range(repeats + 1):
        sync()
        start = time.perf_counter()
        encoder(audio, lengths)
        sync()
        if i:  # the first run warms up kernels and allocators
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000 / audio.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="base")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1, help="clips per forward, all of the same length")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    context = BuildContext(card=None)
    encoders = {mode: WhisperEncoder(WhisperOptions(config=CONFIGS[args.config], pad_to_window=mode == "window"),
                                     context).eval().to(args.device) for mode in ("variable", "window")}
    encoders["window"].load_state_dict(encoders["variable"].state_dict())  # same weights, same work
    print(f"whisper-{args.config} encoder (random weights), device {args.device}, batch {args.batch}, "
          f"median of {args.repeats}; ms per clip")
    print(f"{'clip':>6} {'variable':>10} {'window':>10} {'speed-up':>9}")
    with torch.inference_mode():
        for seconds in (2, 5, 10):
            audio = 0.1 * torch.randn(args.batch, seconds * 16000, device=args.device)
            lengths = torch.full((args.batch,), seconds * 16000, device=args.device)
            variable = time_per_clip(encoders["variable"], audio, lengths, args.repeats)
            window = time_per_clip(encoders["window"], audio, lengths, args.repeats)
            print(f"{seconds:>5}s {variable:>10.1f} {window:>10.1f} {window / variable:>8.1f}x")


if __name__ == "__main__":
    main()
