"""The server's hard limits: what a request may send and how long it may take. Every one is configurable
(``slmzoo serve --help``) and logged at startup."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

MIB = 1024 * 1024
#: A long-audio policy nobody set: vLLM's default decoded-duration cap.
FALLBACK_AUDIO_SECONDS = 600.0


@dataclass
class Limits:
    max_upload_bytes: int = 25 * MIB  # one audio file (upload, base64 part, fetched URL), checked before decoding
    max_audio_seconds: float = FALLBACK_AUDIO_SECONDS  # decoded duration of one clip
    max_decoded_samples: int = 64 * MIB  # decoded samples of one clip, all channels (256 MiB of float32)
    max_audio_parts: int = 8  # audio parts per request
    max_channels: int = 2
    max_queue: int = 256  # requests waiting or running per model; more get 429
    max_batch_size: int = 16  # rows decoded together
    max_tokens: int = 1024  # the most a request may ask for
    default_max_tokens: int = 256  # when a request does not say
    deadline_base_seconds: float = 120.0  # per-request deadline: max(base, per_audio_second x audio seconds)
    deadline_per_audio_second: float = 2.5
    allowed_audio_hosts: list[str] = field(default_factory=list)  # http(s) audio_url fetching: off when empty
    fetch_timeout_seconds: float = 10.0
    max_redirects: int = 3

    @property
    def max_body_bytes(self) -> int:
        """A request body: room for the largest audio file as base64 in JSON, plus the rest of the request."""
        return self.max_upload_bytes * 4 // 3 + MIB

    def deadline_seconds(self, audio_seconds: float) -> float:
        return max(self.deadline_base_seconds, self.deadline_per_audio_second * audio_seconds)

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in asdict(self).items()]
        return ", ".join(parts)


def default_audio_seconds(model) -> float:
    """The card's long-audio policy: a fixed-window encoder (Whisper: 30 s) that does not split long clips caps a
    clip at its window; otherwise :data:`FALLBACK_AUDIO_SECONDS`."""
    encoder = getattr(model, "encoder", None)
    window = getattr(encoder, "window_samples", None)
    if window and getattr(encoder, "long_clips", None) != "split":
        return window / encoder.sampling_rate
    return FALLBACK_AUDIO_SECONDS
