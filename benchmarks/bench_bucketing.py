"""Duration bucketing vs random batching on the spoken-digits corpus, in one run.

Padding efficiency = real audio samples / padded samples over many sampled batches (no model needed), and
training throughput = audio seconds per wall second over a few optimizer steps of the salm tiny preset.
With a GPU, also LLM tokens per second and model FLOPs utilization (MFU) of a ~1B-parameter SALM in bf16.

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


# Dense bf16 peak of the accelerators we meet, FLOP/s (vendor datasheets, no sparsity).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
# SALM at about 1B parameters: a 16-layer FastConformer (~0.4B) + Qwen3-0.6B, random weights.
GPU_CARD_SETS = [
    "encoder.config.num_hidden_layers=16",
    "llm.config={model_type: qwen3, hidden_size: 1024, num_hidden_layers: 28, num_attention_heads: 16, "
    "num_key_value_heads: 8, head_dim: 128, intermediate_size: 3072, vocab_size: 151936, "
    "max_position_embeddings: 40960, tie_word_embeddings: true}",
    "llm.pretrained=null", "llm.tokenizer=bytes", "encoder.pretrained=null", "llm.dtype=bfloat16",
]


def gpu_mfu(manifest: str, steps: int, max_duration: float) -> dict:
    """Tokens/s and MFU of bf16 training steps on the GPU; FLOPs = 6 x params x positions per component."""
    import slmzoo
    from slmzoo.data import SpeechDataset, make_loader, make_sampler, training_cuts
    from slmzoo.training.loop import TENSOR_KEYS

    torch.manual_seed(0)
    model = slmzoo.build(slmzoo.load_card("salm", overrides=GPU_CARD_SETS)).to("cuda", torch.bfloat16).train()
    params = {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in ("encoder", "adapter", "llm")}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    dataset = SpeechDataset(model.formatter, model.sampling_rate)
    loader = iter(make_loader(dataset, make_sampler(training_cuts([manifest]), max_duration, seed=0), num_workers=2))
    flops = tokens = 0.0
    for step in range(steps + 2):
        if step == 2:  # two warm-up steps: kernels compiled, allocator settled
            torch.cuda.synchronize()
            start, flops, tokens = time.perf_counter(), 0.0, 0.0
        batch = {k: v.to("cuda") for k, v in next(loader).items() if k in TENSOR_KEYS}
        batch["audio"] = batch["audio"].to(torch.bfloat16)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        frames = float(batch["audio_lens"].sum()) / 16000 * model.encoder.frame_rate
        positions = float(out.logits.shape[0] * out.logits.shape[1])
        tokens += positions
        flops += 6 * (params["encoder"] + params["adapter"]) * frames + 6 * params["llm"] * positions
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return {"device": name, "params": sum(params.values()), "llm_tokens_per_second": tokens / wall,
            "model_tflops_per_second": flops / wall / 1e12, "mfu": (flops / wall / peak) if peak else None}


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
        dataset = SpeechDataset(model.formatter, model.sampling_rate)

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
