"""Helpers for the server tests and ``benchmarks/bench_serve.py``: a tiny saved model whose greedy answers vary
with the audio, and the real ``slmzoo serve`` process on a free local port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO.parent / "shared" / "data" / "digits"


def varied_model(card: str = "salm", seed: int = 0, scale: float = 4.0, fusion_scale: float = 16.0):
    """``cards/CARD.yaml --preset tiny`` whose greedy answers vary with the audio: the LLM's matrices scaled up (at
    the random initial scale every answer is the same few spaces, which would make equality tests trivially true)
    and a memory fusion opened and scaled up (it starts closed, zero gates and zero residual outputs: the untrained
    fusion ignores the audio, so rows attending to the wrong memory would still agree)."""
    import torch

    from slmzoo.cli.common import load_model

    torch.manual_seed(seed)
    model = load_model(str(REPO / "cards" / f"{card}.yaml"), "tiny")
    with torch.no_grad():
        for parameter in model.llm.parameters():
            if parameter.dim() >= 2:
                parameter.mul_(scale)
        for name, parameter in model.fusion.named_parameters():
            if "gate" in name:
                parameter.fill_(1.0)
            elif parameter.dim() > 1 and not parameter.any():
                parameter.normal_(0.0, 0.2)
            if parameter.dim() > 1:
                parameter.mul_(fusion_scale)
    return model


def tiny_model(directory: Path, card: str = "salm", seed: int = 0) -> Path:
    """:func:`varied_model` saved to ``directory`` (kept if it is there already)."""
    if not (directory / "card.yaml").is_file():
        varied_model(card, seed).save_pretrained(directory)
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``slmzoo serve MODEL --port P *args`` in a child process; ``url``, ``pid``; ``stop()`` ends it."""

    def __init__(self, model: str | Path, *args: str, threads: int = 1, log: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.log = open(log, "w") if log else subprocess.DEVNULL
        self.process = subprocess.Popen([sys.executable, "-m", "slmzoo", "serve", str(model), "--port",
                                         str(self.port), "--device", "cpu", *args], env=env, cwd=REPO,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid
        self._wait()

    def _wait(self, timeout: float = 180.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"slmzoo serve exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("slmzoo serve did not come up")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def digit_files(n: int) -> list[Path]:
    return sorted((DIGITS / "audio").glob("*.flac"))[:n]
