"""Transcription answers in OpenAI's response formats: ``json``, ``text``, ``srt``, ``vtt``, ``verbose_json``.

The models here decode a clip as one answer without timestamps, so ``srt``, ``vtt`` and ``verbose_json`` carry one
segment spanning the whole clip.
"""

from __future__ import annotations

import json
import zlib

FORMATS = ("json", "text", "srt", "verbose_json", "vtt")


def token_usage(done: dict) -> dict:
    audio, prompt, output = done["audio_tokens"], done["prompt_tokens"], done["completion_tokens"]
    return {"type": "tokens", "input_tokens": prompt, "output_tokens": output, "total_tokens": prompt + output,
            "input_token_details": {"audio_tokens": audio, "text_tokens": max(prompt - audio, 0)}}


def render(fmt: str, done: dict, seconds: float, task: str, language: str | None,
           temperature: float) -> tuple[str, str]:
    """``(body, media type)`` of the answer ``done`` (the scheduler's final event) for a clip of ``seconds``."""
    text = done["text"]
    if fmt == "json":
        return json.dumps({"text": text, "usage": token_usage(done)}), "application/json"
    if fmt == "text":
        return text + "\n", "text/plain; charset=utf-8"
    if fmt == "srt":
        return f"1\n{timestamp(0, ',')} --> {timestamp(seconds, ',')}\n{text}\n\n", "application/x-subrip"
    if fmt == "vtt":
        return f"WEBVTT\n\n{timestamp(0, '.')} --> {timestamp(seconds, '.')}\n{text}\n\n", "text/vtt"
    encoded = text.encode()
    segment = {"id": 0, "seek": 0, "start": 0.0, "end": round(seconds, 3), "text": text, "tokens": done["tokens"],
               "temperature": temperature, "avg_logprob": done["avg_logprob"],
               "compression_ratio": len(encoded) / len(zlib.compress(encoded)) if encoded else 0.0,
               "no_speech_prob": 0.0}
    body = {"task": task, "language": language or "unknown", "duration": round(seconds, 3), "text": text,
            "segments": [segment], "usage": {"type": "duration", "seconds": round(seconds, 3)}}
    return json.dumps(body), "application/json"


def timestamp(seconds: float, separator: str) -> str:
    """``HH:MM:SS,mmm`` (SubRip) or ``HH:MM:SS.mmm`` (WebVTT)."""
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"
