"""Duration bucketing vs random batching on the spoken-digits corpus, in one run.

Padding efficiency = real audio samples / padded samples over many sampled batches (no model needed), and
training throughput = audio seconds per wall second over a few optimizer steps of the salm tiny preset.
With a GPU, also LLM tokens per second and model FLOPs utilization (MFU) of a ~1B-parameter SALM in bf16
(FLOPs counted by torch's FlopCounterMode, divided by the accelerator's dense bf16 peak).

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
    from slmzoo.training.loop import tensors

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = iter(make_loader(dataset, sampler, num_workers=1))
    next(loader)  # warm-up batch: worker start and sampler buffer fill are not throughput
    audio, start = 0.0, time.perf_counter()
    for _ in range(steps):
        batch = next(loader)
        loss = model(tensors(batch, "cpu")).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        audio += batch["duration"]
    wall = time.perf_counter() - start
    return {"audio_seconds_per_second": audio / wall, "steps": steps, "wall_seconds": wall}


# Dense bf16 peak of the accelerators we meet, FLOP/s (vendor datasheets, no sparsity).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
# SALM at about 1B parameters: a 16-layer FastConformer (~0.4B) + Qwen3-0.6B with the card's LoRA, random weights.
GPU_CARD_SETS = [
    "encoder.config.num_hidden_layers=16",
    "llm.config={model_type: qwen3, hidden_size: 1024, num_hidden_layers: 28, num_attention_heads: 16, "
    "num_key_value_heads: 8, head_dim: 128, intermediate_size: 3072, vocab_size: 151936, "
    "max_position_embeddings: 40960, tie_word_embeddings: true}",
    "llm.pretrained=null", "llm.tokenizer=bytes", "encoder.pretrained=null",
]


def _train_step(model, batch, optimizer, device: torch.device):
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    # bf16 autocast over fp32 master weights, as `train.precision: bf16` runs under Accelerate.
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = model(batch)
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_mfu(model, batches: list[dict], device: torch.device, peak: float | None) -> dict:
    """LLM tokens/s, model TFLOP/s and MFU of bf16 training steps over ``batches`` (collated, in memory).

    The model FLOPs of each step are counted by torch's FlopCounterMode (matmuls, convolutions, attention; the
    backward of frozen weights is not counted because it does not run) on a first, untimed pass over the
    batches, which also warms kernels and the allocator; a second pass over the same batches is timed.
    """
    from torch.utils.flop_counter import FlopCounterMode

    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    flops = 0
    for batch in batches:
        with FlopCounterMode(display=False) as counter:
            _train_step(model, batch, optimizer, device)
        flops += counter.get_total_flops()
    tokens = 0
    _synchronize(device)
    start = time.perf_counter()
    for batch in batches:
        out = _train_step(model, batch, optimizer, device)
        tokens += out.logits.shape[0] * out.logits.shape[1]
    _synchronize(device)
    wall = time.perf_counter() - start
    achieved = flops / wall
    return {"params": sum(p.numel() for p in model.parameters()), "steps": len(batches), "model_flops": flops,
            "llm_tokens_per_second": tokens / wall, "model_tflops_per_second": achieved / 1e12,
            "mfu": achieved / peak if peak else None}


def gpu_mfu(manifest: str, steps: int, max_duration: float) -> dict:
    """:func:`bf16_mfu` of the ~1B SALM on this machine's GPU."""
    import slmzoo
    from slmzoo.data import SpeechDataset, make_loader, make_sampler, training_cuts

    torch.manual_seed(0)
    model = slmzoo.build(slmzoo.load_card("salm", overrides=GPU_CARD_SETS))
    dataset = SpeechDataset(model.processor)
    loader = make_loader(dataset, make_sampler(training_cuts([manifest]), max_duration, seed=0), num_workers=2)
    batches = [batch for _, batch in zip(range(steps), loader)]
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return {"device": name, **bf16_mfu(model, batches, torch.device("cuda"), peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default=str(DIGITS / "train.jsonl"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--max-duration", type=float, default=55.0)
    parser.add_argument("--gpu-steps", type=int, default=20)
    parser.add_argument("--gpu-max-duration", type=float, default=400.0)
    args = parser.parse_args()

    import slmzoo
    from slmzoo.data import SpeechDataset, make_sampler, training_cuts

    results = {}
    for name, bucketing in (("bucketing", True), ("random", False)):
        torch.manual_seed(0)
        model = slmzoo.build(slmzoo.load_card("salm", preset="tiny")).train()
        dataset = SpeechDataset(model.processor)

        def sampler():
            return make_sampler(training_cuts([args.manifest]), args.max_duration, bucketing=bucketing, seed=0)

        results[name] = {**padding_efficiency(dataset, sampler(), args.batches),
                         **throughput(model, dataset, sampler(), args.steps)}
        print(name, json.dumps(results[name]), flush=True)
    speedup = results["bucketing"]["audio_seconds_per_second"] / results["random"]["audio_seconds_per_second"]
    print("\n| batching | audio padding efficiency | train throughput (audio s/s) |\n|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {100 * r['audio_padding_efficiency']:.1f}% | {r['audio_seconds_per_second']:.1f} |")
    print(f"\nbucketing speed-up: {speedup:.2f}x")
    if torch.cuda.is_available():
        gpu = gpu_mfu(args.manifest, args.gpu_steps, args.gpu_max_duration)
        mfu = "n/a (unknown peak)" if gpu["mfu"] is None else f"{100 * gpu['mfu']:.1f}%"
        print(f"\nGPU bf16, SALM with {gpu['params'] / 1e9:.2f}B parameters on {gpu['device']}: "
              f"{gpu['llm_tokens_per_second']:.0f} LLM tokens/s, {gpu['model_tflops_per_second']:.1f} TFLOP/s, "
              f"MFU {mfu}")
    else:
        print("\nno GPU: tokens/s and MFU of the ~1B bf16 model are measured only where CUDA is available")


if __name__ == "__main__":
    main()
