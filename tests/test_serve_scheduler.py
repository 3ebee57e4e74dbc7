"""The serving scheduler without HTTP: each mode answers like ``generate`` on the request alone, and a cancelled
request stops decoding. (``continuous`` under HTTP load: tests/test_serve.py.)"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from slmzoo.cli.common import load_model
from slmzoo.serving.limits import Limits
from slmzoo.serving.metrics import Metrics
from slmzoo.serving.scheduler import Job, Scheduler


def clips():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(8000 + 4000 * i).astype(np.float32) * 0.1 for i in range(3)]


def build(card: str):
    torch.manual_seed(0)
    model = load_model(f"cards/{card}.yaml", "tiny")
    with torch.no_grad():  # a larger scale makes greedy answers depend on the input
        for parameter in model.llm.parameters():
            if parameter.dim() >= 2:
                parameter.mul_(4)
    return model


class Collector:
    def __init__(self):
        self.events, self.done = [], threading.Event()

    def __call__(self, event):
        self.events.append(event)
        if event[0] in ("done", "error"):
            self.done.set()


def job(model, wave, max_tokens, **kw) -> tuple[Job, Collector]:
    collector = Collector()
    messages = model.processor.formatter.messages(None, num_audio=1)
    return Job(messages=messages, waves=[wave], audio_seconds=len(wave) / 16000, max_tokens=max_tokens,
               deadline=time.monotonic() + 60, send=collector, **kw), collector


def serve_burst(model, mode: str) -> list[str]:
    scheduler = Scheduler(model, "m", Limits(), Metrics())
    assert scheduler.mode == mode
    scheduler.start()
    try:
        pairs = [job(model, wave, 6 + 3 * i) for i, wave in enumerate(clips())]
        for j, _ in pairs:
            scheduler.submit(j)
        for _, collector in pairs:
            assert collector.done.wait(120)
        results = [c.events[-1] for _, c in pairs]
        assert all(kind == "done" for kind, _ in results), results
        for _, c in pairs:  # the deltas add up to the answer
            assert "".join(e[1] for e in c.events if e[0] == "delta") == c.events[-1][1]["text"]
        return [payload["text"] for _, payload in results]
    finally:
        scheduler.stop()


@pytest.mark.parametrize("card, mode", [pytest.param("bestow", "static", marks=pytest.mark.slow),
                                        ("speechverse", "generate")])
def test_memory_fusions_and_encoder_decoders_answer_like_generate_alone(card, mode):
    model = build(card)
    expected = [model.generate(audio=[wave], max_new_tokens=6 + 3 * i)[0] for i, wave in enumerate(clips())]
    assert serve_burst(model, mode) == expected


def test_cancelled_request_stops_decoding():
    model = build("salm")
    scheduler = Scheduler(model, "m", Limits(), Metrics())
    assert scheduler.mode == "continuous"
    scheduler.start()
    try:
        long, collector = job(model, clips()[0], 500, ignore_eos=True)
        short, short_collector = job(model, clips()[1], 5)
        scheduler.submit(long)
        scheduler.submit(short)
        while len(long.tokens) < 3:
            time.sleep(0.01)
        long.cancel()
        assert short_collector.done.wait(60) and short_collector.events[-1][0] == "done"
        deadline = time.monotonic() + 10
        while scheduler.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not scheduler.active and len(long.tokens) < 100
        assert not collector.done.is_set()  # nothing is sent to a client that left
        assert scheduler.metrics.cancelled.values[(("model_name", "m"),)] == 1
    finally:
        scheduler.stop()
