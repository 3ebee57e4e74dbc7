"""The scheduler: one thread owns the model and decodes every request of it.

Continuous batching: each iteration admits the waiting requests (their audio encoded once, in one batch:
:meth:`SpeechLM.prefill`), picks one token for every row, sends each request its new text, and drops the rows that
finished, were cancelled (client gone) or ran past their deadline; then one decoding step runs over the rest
(:class:`slmzoo.decoding.DecodingBatch`). A row decodes as it would alone, so an answer never depends on its
batch companions.

Modes, chosen from the model at startup:

- ``continuous``: rows join and leave between steps: every fusion of a causal LM, those that keep no audio
  (concat, prefix, token_space) and those whose hooks attend to an audio memory (cross_attention, gated_xattn,
  adapter_prompt: the memory is per row state of the decoding batch, joined and cut with its KV cache).
- ``static``: a fusion that keeps state between calls without handing it to the batch row by row (a third party's
  that overrides ``Fusion.release`` only) holds one state per batch, so new requests join only when the batch is
  empty; a finished or cancelled row stops receiving text at once but stays in the batch until the batch ends.
- ``generate``: anything else (encoder-decoder LLMs, other caches): one request at a time through
  ``generate_output`` (``generate`` for an architecture without it), its text sent in one piece.
- ``duplex``: a full-duplex speech-to-speech model (``generate_duplex``): the admitted requests' user channels are
  answered together, frame by frame (the answers never depend on the batch), text and, when asked, speech.

An answer that is empty after stripping (the model ended its turn at once, or wrote only spaces) is not a 200 with
nothing in it: the request fails with 422 ``empty_answer`` (OpenAI's clients do not retry a 422).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from slmzoo.serving.errors import APIError
from slmzoo.serving.metrics import Metrics

log = logging.getLogger("slmzoo.serve")


@dataclass
class Job:
    """One request. ``messages``: the chat (audio tags in place); ``waves``: one mono waveform per tag."""

    messages: list[dict[str, str]]
    waves: list[Any]
    audio_seconds: float
    max_tokens: int
    deadline: float  # time.monotonic() after which the request fails
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    speech: bool = False  # the answer's speech too (``modalities: ["text", "audio"]``): duplex models
    # delivery: ``send(event)`` is called from the scheduler thread (the app hands it to its event loop)
    send: Any = None
    cancelled: bool = False
    # decoding state
    arrival: float = field(default_factory=time.monotonic)
    tokens: list[int] = field(default_factory=list)
    sent: str = ""
    logprob: float = 0.0
    prompt_tokens: int = 0
    audio_tokens: int = 0
    last_token_time: float = 0.0
    generator: Any = None
    finished: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    def __init__(self, model, name: str, limits, metrics: Metrics):
        self.model, self.name, self.limits, self.metrics = model, name, limits, metrics
        self.tokenizer = model.processor.tokenizer
        self.stop_ids = set(model.processor.stop_token_ids)
        self.pad_id = model.processor.pad_token_id or 0
        self.waiting: collections.deque[Job] = collections.deque()
        self.active: list[Job] = []
        self.batch = None
        self.condition = threading.Condition()
        self.running = True
        self.ready = False
        self.mode = self._choose_mode()
        self.thread = threading.Thread(target=self._loop, name=f"scheduler-{name}", daemon=True)

    # -- the event loop's side -------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()
        self.ready = True

    def stop(self) -> None:
        with self.condition:
            self.running = False
            self.condition.notify()
        self.thread.join(timeout=10)

    def load(self) -> int:
        return len(self.waiting) + len(self.active)

    def full(self) -> bool:
        return self.load() >= self.limits.max_queue

    def submit(self, job: Job) -> None:
        with self.condition:
            if self.full():
                raise APIError(429, f"the server is busy: {self.load()} requests for {self.name} are queued or "
                                    "running; retry later", "queue_full", headers={"Retry-After": "1"})
            self.waiting.append(job)
            self.metrics.waiting.set(len(self.waiting), model_name=self.name)
            self.condition.notify()

    # -- choosing how to decode ---------------------------------------------------------------------------------
    def _choose_mode(self) -> str:
        """Warm the model up with one short silent clip and see which mode it supports."""
        import numpy as np

        from slmzoo.decoding import supports_cache

        model = self.model
        if hasattr(model, "generate_duplex"):
            return "duplex"
        if not hasattr(model, "supports_stepwise_decoding") or model.llm.is_encoder_decoder:
            return "generate"
        silence = np.zeros(model.processor.sampling_rate // 2, dtype=np.float32)
        try:
            batch = model.prefill([silence], [None])
        except Exception as error:  # noqa: BLE001 - whatever fails here, generate() still serves the model
            log.warning("step-wise decoding failed on a warm-up clip (%s); serving one request at a time", error)
            return "generate"
        finally:
            model.fusion.release()
        if not supports_cache(batch.cache):
            return "generate"
        return "continuous" if model.supports_stepwise_decoding() else "static"

    # -- the scheduler thread -------------------------------------------------------------------------------------
    def _loop(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self.condition:
                    while self.running and not self.waiting and not self.active:
                        self.condition.wait(timeout=1.0)
                    if not self.running:
                        break
                    new = self._admit()
                try:
                    if self.mode == "generate":
                        for job in new:
                            self._generate(job)
                        continue
                    if self.mode == "duplex":
                        self._duplex(new)
                        continue
                    if new:
                        self._prefill(new)
                    if self.active:
                        self._decode_step()
                except Exception as error:  # noqa: BLE001 - a failed step fails its rows, never the server
                    log.exception("decoding step failed")
                    for job in self.active:
                        self._fail(job, APIError(500, f"decoding failed: {type(error).__name__}", "decoding_failed"))
                    self._reset()
        for job in list(self.waiting) + self.active:
            self._fail(job, APIError(503, "the server is shutting down", "shutting_down"))

    def _admit(self) -> list[Job]:
        """The waiting requests that join now (under the lock); expired or cancelled ones are dropped."""
        now = time.monotonic()
        for job in list(self.waiting):
            if job.cancelled or now > job.deadline:
                self.waiting.remove(job)
                self._drop(job, APIError(408, "the request waited past its deadline", "deadline_exceeded"))
        room = self.limits.max_batch_size - len(self.active)
        if self.mode == "generate":
            room = 1
        elif self.mode == "static" and self.active:
            room = 0
        new = [self.waiting.popleft() for _ in range(min(room, len(self.waiting)))]
        self.metrics.waiting.set(len(self.waiting), model_name=self.name)
        for job in new:
            self.metrics.queue_time.observe(now - job.arrival, model_name=self.name)
        return new

    def _prefill(self, jobs: list[Job]) -> None:
        """Encode and prefill the new requests together. If that fails, each is tried alone (the bad ones get
        their error) and the good ones are prefilled together again: one bad request never fails the others."""
        from slmzoo.decoding import DecodingBatch

        try:
            batch = self.model.prefill([j.waves for j in jobs], [j.messages for j in jobs])
        except Exception:  # noqa: BLE001
            self.model.fusion.release()
            good = []
            for job in jobs:
                try:
                    self.model.prefill([job.waves], [job.messages])
                    good.append(job)
                except Exception as error:  # noqa: BLE001
                    self._drop(job, APIError(400, f"the model cannot take this request: {error}", "invalid_input"))
                finally:
                    self.model.fusion.release()
            jobs = good
            if not jobs:
                return
            batch = self.model.prefill([j.waves for j in jobs], [j.messages for j in jobs])
        for job, length, audio in zip(jobs, batch.prompt_tokens.tolist(), batch.audio_tokens.tolist()):
            job.prompt_tokens, job.audio_tokens = int(length), int(audio)
            job.generator = self._generator(job)
            self.metrics.prompt_tokens.inc(job.prompt_tokens, model_name=self.name)
        self.batch = batch if self.batch is None else DecodingBatch.concat([self.batch, batch])
        self.active += jobs
        self.metrics.running.set(len(self.active), model_name=self.name)

    def _generator(self, job: Job):
        import torch

        if job.seed is None or job.temperature == 0:
            return None
        return torch.Generator(device=self.model.device).manual_seed(job.seed)

    def _decode_step(self) -> None:
        """One token for every row, text to each request, finished rows out, then one step over the rest."""
        import torch

        from slmzoo.components import _pick

        logits = self.batch.logits
        tokens = logits.argmax(-1)
        for i, job in enumerate(self.active):
            if job.temperature > 0 and not job.finished:
                tokens[i] = _pick(logits[i:i + 1], True, job.temperature, job.top_p, job.generator)[0]
        logprobs = torch.log_softmax(logits, -1).gather(1, tokens[:, None])[:, 0].tolist()
        now = time.monotonic()
        self.metrics.batch_size.observe(len(self.active), model_name=self.name)
        for job, token, logprob in zip(self.active, tokens.tolist(), logprobs):
            if not job.finished:
                self._advance(job, token, logprob, now)
        keep = [i for i, job in enumerate(self.active) if not job.finished]
        if self.mode == "static":
            if not keep:
                self._reset()
                return
            tokens = torch.where(torch.tensor([j.finished for j in self.active], device=tokens.device),
                                 torch.full_like(tokens, self.pad_id), tokens)
        elif len(keep) < len(self.active):
            if not keep:
                self._reset()
                return
            self.active = [self.active[i] for i in keep]
            self.batch.select(keep)
            tokens = tokens[keep]
        self.metrics.running.set(len(self.active), model_name=self.name)
        self.batch.step(self.model.llm, tokens)

    def _advance(self, job: Job, token: int, logprob: float, now: float) -> None:
        """Record one token of ``job``, send its new text, finish it if it is done."""
        if job.cancelled:
            self.metrics.cancelled.inc(model_name=self.name)
            job.finished = True
            return
        if now > job.deadline:
            self._drop(job, APIError(504, "the request ran past its deadline", "deadline_exceeded"))
            return
        if not job.tokens:
            self.metrics.ttft.observe(now - job.arrival, model_name=self.name)
        else:
            self.metrics.itl.observe(now - job.last_token_time, model_name=self.name)
        job.last_token_time = now
        self.metrics.generation_tokens.inc(model_name=self.name)
        is_stop = token in self.stop_ids and not job.ignore_eos
        if not is_stop:
            job.tokens.append(token)
            job.logprob += logprob
        text, hit_stop = self._text(job)
        if is_stop or hit_stop:
            self._finish(job, text, "stop")
        elif len(job.tokens) >= job.max_tokens:
            self._finish(job, text, "length")
        else:
            self._send_delta(job, text, final=False)

    def _text(self, job: Job) -> tuple[str, bool]:
        """The answer so far, cut at the first stop string (and whether one was found)."""
        text = self.tokenizer.decode(job.tokens, skip_special_tokens=True).lstrip()
        cuts = [text.find(s) for s in job.stop if s and s in text]
        return (text[: min(cuts)], True) if cuts else (text, False)

    def _send_delta(self, job: Job, text: str, final: bool) -> None:
        """Send what is new in ``text``; before the end, hold back trailing spaces, a partial character and
        what could still become a stop string, so the deltas add up to the final answer exactly."""
        if not final:
            text = text.rstrip()
            if text.endswith("\ufffd"):
                text = text[:-1]
            hold = max((len(s) for s in job.stop), default=1) - 1
            text = text[: len(text) - hold] if hold else text
        else:
            text = text.strip()
        if text.startswith(job.sent) and len(text) > len(job.sent):
            job.send(("delta", text[len(job.sent):]))
            job.sent = text

    def _finish(self, job: Job, text: str, reason: str, completion: int | None = None) -> None:
        """Send the rest of the answer and the final event (an error if the answer is empty). ``completion``: the
        tokens generated, when not ``job.tokens`` plus the stop token."""
        self._send_delta(job, text, final=True)
        job.finished = True
        if completion is None:
            completion = len(job.tokens) + (1 if reason == "stop" and not job.ignore_eos else 0)
        if not job.sent:
            return self._fail(job, empty_answer(reason, completion))
        self.metrics.e2e.observe(time.monotonic() - job.arrival, model_name=self.name)
        self.metrics.success.inc(model_name=self.name, finished_reason=reason)
        job.send(("done", {"text": job.sent, "finish_reason": reason, "tokens": list(job.tokens), "prompt_tokens": job.prompt_tokens,
                           "completion_tokens": completion, "audio_tokens": job.audio_tokens,
                           "avg_logprob": job.logprob / max(len(job.tokens), 1)}))

    def _drop(self, job: Job, error: APIError) -> None:
        job.finished = True
        if job.cancelled:
            self.metrics.cancelled.inc(model_name=self.name)
            return
        self._fail(job, error)

    def _fail(self, job: Job, error: APIError) -> None:
        job.finished = True
        self.metrics.rejected.inc(model_name=self.name, reason=error.code)
        error.counted = True
        job.send(("error", error))

    def _reset(self) -> None:
        self.active, self.batch = [], None
        if hasattr(self.model, "fusion"):
            self.model.fusion.release()
        self.metrics.running.set(0, model_name=self.name)

    def _generate(self, job: Job) -> None:
        """``generate`` mode: the whole answer at once (no step-wise decoding for this model)."""
        if job.cancelled:
            return self._drop(job, APIError(499, "cancelled", "cancelled"))
        kwargs = {"do_sample": job.temperature > 0}
        if job.temperature > 0:
            kwargs.update(temperature=job.temperature, top_p=job.top_p)
        request = dict(audio=[job.waves], prompts=[job.messages], max_new_tokens=job.max_tokens, **kwargs)
        try:
            if hasattr(self.model, "generate_output"):
                out = self.model.generate_output(**request)
                row = out.ids[0].tolist()
                job.prompt_tokens, job.audio_tokens = int(out.prompt_tokens[0]), int(out.audio_tokens[0])
            else:  # an architecture with generate() only: its text, tokenized again
                text = self.model.generate(**request)[0]
                row = self.tokenizer(text, add_special_tokens=False).input_ids
        except Exception as error:  # noqa: BLE001
            return self._drop(job, APIError(400, f"the model cannot take this request: {error}", "invalid_input"))
        stop_at = next((i for i, t in enumerate(row) if t in self.stop_ids), None)
        job.tokens = row if stop_at is None else row[:stop_at]
        self.metrics.ttft.observe(time.monotonic() - job.arrival, model_name=self.name)
        self.metrics.generation_tokens.inc(len(row) if stop_at is None else stop_at + 1, model_name=self.name)
        text, hit_stop = self._text(job)
        stopped = stop_at is not None or hit_stop or len(row) < job.max_tokens  # the model ended before the limit
        self._finish(job, text, "stop" if stopped else "length", completion=len(row) if stop_at is None else stop_at + 1)

    def _duplex(self, jobs: list[Job]) -> None:
        """``duplex`` mode: each request's one clip is a user channel; the agent's text (all its turns) and, for
        requests that asked, its speech, at the codec's rate and as long as the input. Usage counts frames: the
        prompt's are the user channel's, the completion's one step (a text token and a speech frame) each."""
        for job in [j for j in jobs if j.cancelled]:
            self._drop(job, APIError(499, "cancelled", "cancelled"))
        jobs = [j for j in jobs if not j.cancelled]
        if not jobs:
            return
        self.metrics.batch_size.observe(len(jobs), model_name=self.name)
        try:
            out = self.model.generate_duplex([j.waves[0] for j in jobs], self.model.sampling_rate,
                                             decode_audio=any(j.speech for j in jobs))
        except Exception as error:  # noqa: BLE001
            for job in jobs:
                self._drop(job, APIError(400, f"the model cannot take this request: {error}", "invalid_input"))
            return
        now = time.monotonic()
        for i, job in enumerate(jobs):
            if job.cancelled:
                self._drop(job, APIError(499, "cancelled", "cancelled"))
                continue
            if now > job.deadline:
                self._drop(job, APIError(504, "the request ran past its deadline", "deadline_exceeded"))
                continue
            frames = int(out.lengths[i])
            self.metrics.ttft.observe(now - job.arrival, model_name=self.name)
            self.metrics.generation_tokens.inc(frames, model_name=self.name)
            job.prompt_tokens = job.audio_tokens = frames
            text = out.texts[i].strip()
            if not text:
                self._fail(job, APIError(422, f"the model's answer is empty: the agent said nothing in {frames} "
                                              "frames (the audio may hold no question it recognises)",
                                         "empty_answer"))
                continue
            job.send(("delta", text))
            self.metrics.e2e.observe(time.monotonic() - job.arrival, model_name=self.name)
            self.metrics.success.inc(model_name=self.name, finished_reason="stop")
            job.send(("done", {"text": text, "finish_reason": "stop", "prompt_tokens": frames,
                               "completion_tokens": frames, "audio_tokens": frames,
                               "speech": out.audio[i].numpy() if job.speech else None,
                               "sampling_rate": out.sampling_rate}))


def empty_answer(reason: str, tokens: int) -> APIError:
    """What a request whose answer is empty gets instead of a 200 with no text."""
    how = ("ended its turn at once" if reason == "stop" and tokens <= 1
           else f"wrote no text in {tokens} token{'s' if tokens != 1 else ''}")
    return APIError(422, f"the model's answer is empty: it {how} (the audio may hold nothing it recognises); "
                         "try another instruction, a larger max_tokens or a temperature above 0", "empty_answer")
