"""The serving scheduler without HTTP: each mode answers like ``generate`` on the request alone (the memory fusions
in continuous batches too), usage is counted in every mode, an empty answer is an error, and a cancelled request
stops decoding. (``continuous`` under HTTP load: tests/test_serve.py.)"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from slmzoo.components import Fusion
from slmzoo.serving.limits import Limits
from slmzoo.serving.metrics import Metrics
from slmzoo.serving.scheduler import Job, Scheduler
from tests.serve_utils import varied_model


def clips():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(8000 + 4000 * i).astype(np.float32) * 0.1 for i in range(3)]


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


def serve_burst(model, mode: str) -> list[dict]:
    """Three requests of different lengths: the longest first, the two others once it is decoding. Each one's
    final event; continuous batching takes the late ones into the running batch, static batching after it."""
    scheduler = Scheduler(model, "m", Limits(), Metrics())
    assert scheduler.mode == mode
    sizes = []
    scheduler.metrics.batch_size.observe = lambda rows, **labels: sizes.append(rows)
    scheduler.start()
    try:
        pairs = [job(model, wave, 6 + 3 * i) for i, wave in enumerate(clips())]
        scheduler.submit(pairs[2][0])
        while not pairs[2][0].tokens:
            time.sleep(0.001)
        for j, _ in pairs[:2]:
            scheduler.submit(j)
        for _, collector in pairs:
            assert collector.done.wait(120)
        results = [c.events[-1] for _, c in pairs]
        assert all(kind == "done" for kind, _ in results), results
        for _, c in pairs:  # the deltas add up to the answer
            assert "".join(e[1] for e in c.events if e[0] == "delta") == c.events[-1][1]["text"]
        if mode != "generate":
            assert sizes[0] == 1 and max(sizes) == (3 if mode == "continuous" else 2), sizes
        return [payload for _, payload in results]
    finally:
        scheduler.stop()


def answers_alone(model) -> list[str]:
    answers = [model.generate(audio=[wave], max_new_tokens=6 + 3 * i)[0] for i, wave in enumerate(clips())]
    assert len(set(answers)) > 1 and all(answers)  # they differ: comparing them means something
    return answers


@pytest.mark.parametrize("card, mode", [pytest.param("bestow", "continuous", marks=pytest.mark.slow),
                                        ("audio-flamingo", "continuous"), ("mu-llama", "continuous"),
                                        ("speechverse", "generate")])
def test_memory_fusions_and_encoder_decoders_answer_like_generate_alone(card, mode):
    model = varied_model(card)
    expected = answers_alone(model)
    done = serve_burst(model, mode)
    assert [d["text"] for d in done] == expected
    for d, wave in zip(done, clips()):  # usage in every mode: the prompt's text and audio, the answer's tokens
        assert 0 < d["audio_tokens"] < d["prompt_tokens"] and d["completion_tokens"] >= len(d["tokens"]) > 0
    assert done[2]["audio_tokens"] > done[0]["audio_tokens"]  # the longer clip


def test_a_fusion_that_keeps_its_state_to_itself_is_served_in_static_batches(monkeypatch):
    """A third party's memory fusion that overrides ``release`` but hands no state to the batch: static batches."""
    model = varied_model("audio-flamingo")
    monkeypatch.setattr(type(model.fusion), "decoding_state", Fusion.decoding_state)
    assert not model.supports_stepwise_decoding()
    expected = answers_alone(model)
    assert [d["text"] for d in serve_burst(model, "static")] == expected


def test_an_empty_answer_is_an_error_not_an_empty_200():
    model = varied_model("salm")
    wave = clips()[0]
    answer = model.generate(audio=[wave], max_new_tokens=8)[0]
    first_token = int(model.prefill([wave]).logits.argmax(-1))
    model.fusion.release()
    scheduler = Scheduler(model, "m", Limits(), Metrics())
    scheduler.start()
    try:
        cut, cut_events = job(model, wave, 8, stop=[answer[:2]])  # a stop string at the very start: nothing left
        scheduler.submit(cut)
        assert cut_events.done.wait(60)
        scheduler.stop_ids.add(first_token)  # the model ends its turn at once
        at_once, at_once_events = job(model, wave, 8)
        scheduler.submit(at_once)
        assert at_once_events.done.wait(60)
    finally:
        scheduler.stop()
    for events, how in ((cut_events, "wrote no text"), (at_once_events, "ended its turn at once")):
        assert [kind for kind, _ in events.events] == ["error"]  # no delta, no done
        error = events.events[-1][1]
        assert (error.status, error.code) == (422, "empty_answer") and how in error.message
    assert scheduler.metrics.rejected.values[(("model_name", "m"), ("reason", "empty_answer"))] == 2


def test_cancelled_request_stops_decoding():
    model = varied_model("salm")
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
