"""OpenAI request shapes (pydantic) and the response bodies the server sends.

Requests are validated here so a wrong type or value is a 400 naming the field (``param``), never a 422 or a
500. Unknown top-level fields are ignored (as vLLM does, so clients that send more of OpenAI's API still work);
inside content parts the shapes are strict.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slmzoo.serving.errors import bad_request


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(Strict):
    type: Literal["text"]
    text: str


class InputAudio(Strict):
    data: str
    format: str = Field(max_length=16)


class InputAudioPart(Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


class AudioURL(Strict):
    url: str


class AudioURLPart(Strict):
    type: Literal["audio_url"]
    audio_url: AudioURL


Part = Annotated[Union[TextPart, InputAudioPart, AudioURLPart], Field(discriminator="type")]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[Part]]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


# Audio out (OpenAI's ``audio`` request field): the formats written here. The voice is the model's own (a duplex
# model speaks in the one voice it was trained on); ``voice`` is accepted for the clients that always send it.
SPEECH_FORMATS = ("wav", "flac", "pcm16")


class AudioOutput(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    format: Literal[SPEECH_FORMATS] = "wav"
    voice: str | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)
    ignore_eos: bool = False  # vLLM's extension: decode exactly max_tokens (benchmarks)
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioOutput | None = None

    @property
    def wants_speech(self) -> bool:
        return "audio" in (self.modalities or [])


def validate(model: type[BaseModel], data: Any) -> BaseModel:
    """``data`` as ``model``, or a 400 naming the first wrong field (``messages[0].content[1].input_audio.data``)."""
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object")
    for key in ("temperature", "top_p"):  # strict mode refuses 1 for a float; JSON encoders write 1.0 as 1
        if type(data.get(key)) is int:
            data = {**data, key: float(data[key])}
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]
                        if isinstance(p, int) or ("[" not in p and p not in _PART_TAGS)).lstrip(".")
        raise bad_request(f"{param or 'body'}: {first['msg']}", param or None) from None


_PART_TAGS = {"text", "input_audio", "audio_url"}  # pydantic puts the union member's tag into the location


# -- responses --------------------------------------------------------------------------------------------------
def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int, audio_tokens: int,
          completion_audio_tokens: int | None = None) -> dict[str, Any]:
    body = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"audio_tokens": audio_tokens, "cached_tokens": 0}}
    if completion_audio_tokens is not None:
        body["completion_tokens_details"] = {"audio_tokens": completion_audio_tokens}
    return body


def speech_bytes(wave, sampling_rate: int, format: str) -> bytes:
    """``wave [S]`` float -> a WAV or FLAC file (16-bit) or raw 16-bit little-endian PCM (``pcm16``)."""
    import io

    import numpy as np
    import soundfile as sf

    if format == "pcm16":
        return (np.clip(wave, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(wave, -1.0, 1.0), sampling_rate, format=format.upper(), subtype="PCM_16")
    return buffer.getvalue()


def speech_message(text: str, data: bytes) -> dict[str, Any]:
    """OpenAI's ``message.audio`` (and a stream's ``delta.audio``): the speech base64-encoded, its transcript."""
    import base64

    return {"id": f"audio_{uuid.uuid4().hex}", "data": base64.b64encode(data).decode("ascii"),
            "expires_at": int(time.time()) + 3600, "transcript": text}


def chat_completion(id_: str, model: str, text: str, finish_reason: str, usage_: dict,
                    audio: dict | None = None) -> dict[str, Any]:
    """``audio``: the answer as speech (:func:`speech_message`); the text is then its transcript, as OpenAI's."""
    message = {"role": "assistant", "content": text} if audio is None else \
        {"role": "assistant", "content": None, "audio": audio}
    return {"id": id_, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage_}


def chat_chunk(id_: str, model: str, delta: dict | None, finish_reason: str | None = None,
               usage_: dict | None = None) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    chunk = {"id": id_, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
             "choices": choices}
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk
