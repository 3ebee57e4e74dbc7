"""``slmzoo serve`` under load: 1 (sequential), 4, 16 and 64 concurrent clients against the same server in one run.

Every request is a streamed chat completion with one digits clip and a fixed answer length (``ignore_eos``), so
the levels do the same work per request. Reported per level: requests per second and its ratio to sequential
requests, p50/p95 latency, p50 time to first token, and RTFx (seconds of audio served per second of wall time).
The issue's goal: >= 5x the sequential requests per second at 16 clients on a CPU with a tiny card.

    python benchmarks/bench_serve.py                      # tiny salm card on the CPU
    python benchmarks/bench_serve.py --card audio-flamingo  # a memory fusion (gated cross-attention), tiny
    python benchmarks/bench_serve.py --model out/x --device cuda --dtype bf16 --max-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.serve_utils import ServerProcess, digit_files, tiny_model  # noqa: E402

NAME = "bench"


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def one_request(client: httpx.AsyncClient, body: dict) -> tuple[float, float]:
    """(latency, time to first token) of one streamed request."""
    start = time.perf_counter()
    first = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if first is None and '"content": "' in line and '"content": ""' not in line:
                first = time.perf_counter() - start
            if line == "data: [DONE]":
                break
    latency = time.perf_counter() - start
    return latency, first if first is not None else latency


async def level(url: str, bodies: list[dict], seconds: list[float], clients: int, requests: int) -> dict:
    """``requests`` requests from ``clients`` concurrent clients (each sends its next one when the last ends)."""
    results: list[tuple[float, float]] = []
    audio = 0.0
    counter = iter(range(requests))
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients)) as client:
        async def worker():
            nonlocal audio
            for i in counter:
                results.append(await one_request(client, bodies[i % len(bodies)]))
                audio += seconds[i % len(bodies)]

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    latencies, ttfts = [r[0] for r in results], [r[1] for r in results]
    return {"clients": clients, "requests": requests, "wall_s": wall, "req_per_s": requests / wall,
            "p50_s": statistics.median(latencies), "p95_s": percentile(latencies, 0.95),
            "ttft_p50_s": statistics.median(ttfts), "rtfx": audio / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a card, saved model or run folder (default: --card's tiny preset)")
    parser.add_argument("--card", default="salm", help="without --model: this card's tiny preset, scaled random weights")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--max-tokens", type=int, default=32, help="answer length of every request")
    parser.add_argument("--levels", default="1,4,16,64")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server (CPU)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve.json")
    args = parser.parse_args()

    files = digit_files(8)
    seconds = [sf.info(f).duration for f in files]
    bodies = [{"model": NAME, "temperature": 0, "max_tokens": args.max_tokens, "ignore_eos": True, "stream": True,
               "messages": [{"role": "user", "content": [
                   {"type": "input_audio", "input_audio": {"data": base64.b64encode(f.read_bytes()).decode(),
                                                           "format": "flac"}}]}]} for f in files]
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or tiny_model(Path(tmp) / "model", card=args.card)
        extra = ["--served-model-name", NAME, "--max-batch-size", str(max(levels)), "--device", args.device]
        extra += ["--preset", args.preset] if args.preset else []
        extra += ["--dtype", args.dtype] if args.dtype else []
        with ServerProcess(model, *extra, threads=args.threads) as server:
            asyncio.run(level(server.url, bodies, seconds, 2, 4))  # warm-up
            rows = [asyncio.run(level(server.url, bodies, seconds, c, max(16, 4 * c))) for c in levels]
    base = rows[0]["req_per_s"]
    print(f"| clients | requests | req/s | vs sequential | p50 latency (s) | p95 latency (s) | TTFT p50 (s) | RTFx |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clients']}{' (sequential)' if r['clients'] == 1 else ''} | {r['requests']} | "
              f"{r['req_per_s']:.2f} | {r['req_per_s'] / base:.1f}x | {r['p50_s']:.3f} | {r['p95_s']:.3f} | "
              f"{r['ttft_p50_s']:.3f} | {r['rtfx']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": str(args.model or f"{args.card} tiny (scaled)"), "device": args.device,
                                    "max_tokens": args.max_tokens, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
