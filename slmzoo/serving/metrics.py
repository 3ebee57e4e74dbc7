"""Prometheus metrics in the text exposition format, without a client library: counters, gauges and
histograms with labels, thread-safe (the scheduler thread and the event loop both record).

Names follow vLLM's (``vllm:time_to_first_token_seconds`` -> ``slmzoo:time_to_first_token_seconds``) where the
meaning is the same; the audio ones (audio seconds in, rejects by reason, batch sizes) are slmzoo's own.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

PREFIX = "slmzoo:"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Metric:
    def __init__(self, registry: "Metrics", name: str, kind: str, help_: str, buckets=None):
        self.name, self.kind, self.help, self.buckets = PREFIX + name, kind, help_, buckets
        self.values: dict[tuple, float] = defaultdict(float)
        self.histograms: dict[tuple, list] = {}
        self.lock = registry.lock
        registry.metrics.append(self)

    def inc(self, amount: float = 1.0, **labels) -> None:
        with self.lock:
            self.values[_key(labels)] += amount

    def set(self, value: float, **labels) -> None:
        with self.lock:
            self.values[_key(labels)] = value

    def observe(self, value: float, **labels) -> None:
        with self.lock:
            counts = self.histograms.setdefault(_key(labels), [0] * (len(self.buckets) + 1) + [0.0])
            counts[bisect.bisect_left(self.buckets, value)] += 1
            counts[-1] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        if self.kind != "histogram":
            items = self.values.items() if self.values else [((), 0.0)]
            return lines + [f"{self.name}{_labels(k)} {_num(v)}" for k, v in sorted(items)]
        for key, counts in sorted(self.histograms.items()):
            total = 0
            for bound, n in zip((*self.buckets, "+Inf"), counts[:-1]):
                total += n
                lines.append(f"{self.name}_bucket{_labels(key + (('le', _num(bound)),))} {total}")
            lines += [f"{self.name}_sum{_labels(key)} {_num(counts[-1])}", f"{self.name}_count{_labels(key)} {total}"]
        return lines


class Metrics:
    """Every metric the server exports; ``model_name`` labels them as vLLM does."""

    def __init__(self):
        self.lock = threading.Lock()
        self.metrics: list[Metric] = []
        m = self._metric
        self.running = m("num_requests_running", "gauge", "Requests in the decoding batch.")
        self.waiting = m("num_requests_waiting", "gauge", "Requests waiting to join the batch.")
        self.ttft = m("time_to_first_token_seconds", "histogram", "From arrival to the first token.", LATENCY_BUCKETS)
        self.itl = m("inter_token_latency_seconds", "histogram", "Between consecutive tokens.", LATENCY_BUCKETS)
        self.e2e = m("e2e_request_latency_seconds", "histogram", "From arrival to the last token.", LATENCY_BUCKETS)
        self.queue_time = m("request_queue_time_seconds", "histogram", "From arrival to joining the batch.",
                            LATENCY_BUCKETS)
        self.prompt_tokens = m("prompt_tokens_total", "counter", "Prefill tokens (text and audio embeddings).")
        self.generation_tokens = m("generation_tokens_total", "counter", "Generated tokens.")
        self.audio_seconds = m("audio_input_seconds_total", "counter", "Seconds of audio received.")
        self.batch_size = m("batch_size", "histogram", "Rows in each decoding step.", COUNT_BUCKETS)
        self.success = m("request_success_total", "counter", "Finished requests by finish reason.")
        self.rejected = m("request_rejected_total", "counter", "Refused or failed requests by reason.")
        self.cancelled = m("request_cancelled_total", "counter", "Requests whose client went away.")

    def _metric(self, name, kind, help_, buckets=None) -> Metric:
        return Metric(self, name, kind, help_, buckets)

    def render(self) -> str:
        with self.lock:
            return "\n".join(line for metric in self.metrics for line in metric.render()) + "\n"


def _key(labels: dict) -> tuple:
    return tuple(sorted(labels.items()))


def _labels(key: tuple) -> str:
    if not key:
        return ""
    escaped = (f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in key)
    return "{" + ",".join(escaped) + "}"


def _num(value) -> str:
    if isinstance(value, str):
        return value
    return repr(float(value)) if not float(value).is_integer() else str(int(value)) + ".0"
