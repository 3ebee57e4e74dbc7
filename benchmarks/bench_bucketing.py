"""Duration bucketing vs random batching on the spoken-digits corpus, in one run.

Padding efficiency = real audio samples / padded samples over many sampled batches (no model needed), and
training throughput = audio seconds per wall second over a few optimizer steps of the salm tiny preset.

    python benchmarks/bench_bucketing.py [--steps 12] [--batches 200] [--max-duration 55]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

DIGITS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "digits"


def padding_efficiency(dataset, sampler, batches: int) -> dict:
    """Real / padded audio samples over ``batches`` batches of the sampler."""
    real = padded = 0
    for _, cuts in zip(range(batches), sampler):
        lens = [round(c.duration * 16000) for c in cuts]
        real += sum(lens)
        padded += max(lens) * len(lens)
    return {"audio_padding_efficiency": real / padded, "batches": batches}


def throughput(model, dataset, sampler, steps: int) -> dict:
    from slmzoo.data import make_loader
    from slmzoo.training.loop import TENSOR_KEYS

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = iter(make_loader(dataset, sampler, num_workers=1))
    next(loader)  # warm-up batch: worker start and sampler buffer fill are not throughput
    audio, start = 0.0, time.perf_counter()
    for _ in range(steps):
        batch = next(loader)
        loss = model({k: batch[k] for k in TENSOR_KEYS}).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        audio += batch["duration"]
    wall = time.perf_counter() - start
    return {"audio_seconds_per_second": audio / wall, "steps": steps, "wall_seconds": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default=str(DIGITS / "train.jsonl"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--max-duration", type=float, default=55.0)
    args = parser.parse_args()

    import slmzoo
    from slmzoo.data import SpeechDataset, make_sampler, training_cuts

    results = {}
    for name, bucketing in (("bucketing", True), ("random", False)):
        torch.manual_seed(0)
        model = slmzoo.build(slmzoo.load_card("salm", preset="tiny")).train()
        dataset = SpeechDataset(model.formatter, model.sampling_rate)

        def sampler():
            return make_sampler(training_cuts([args.manifest]), args.max_duration, bucketing=bucketing, seed=0)

        results[name] = {**padding_efficiency(dataset, sampler(), args.batches),
                         **throughput(model, dataset, sampler(), args.steps)}
        print(name, json.dumps(results[name]), flush=True)
    speedup = results["bucketing"]["audio_seconds_per_second"] / results["random"]["audio_seconds_per_second"]
    print(f"\n| batching | audio padding efficiency | train throughput (audio s/s) |\n|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {100 * r['audio_padding_efficiency']:.1f}% | {r['audio_seconds_per_second']:.1f} |")
    print(f"\nbucketing speed-up: {speedup:.2f}x")


if __name__ == "__main__":
    main()
