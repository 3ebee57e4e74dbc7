"""Serving a full-duplex speech-to-speech model: ``/v1/chat/completions`` with ``modalities: ["text", "audio"]``
answers with OpenAI's ``message.audio`` (base64 speech at the codec's rate, as long as the user channel, and its
transcript), equal to ``generate_duplex`` on the request alone whatever it is batched with; text-only requests get
the agent's text; what a duplex model cannot take is a 400 naming it."""

from __future__ import annotations

import base64
import io
import json
import threading

import numpy as np
import pytest
import soundfile as sf
import torch

import slmzoo
from slmzoo.serving.app import create_app
from tests.conftest import speechlike


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return slmzoo.build(slmzoo.load_card("duplex-s2s", preset="tiny")).eval()


@pytest.fixture(scope="module")
def client(model):
    from fastapi.testclient import TestClient

    with TestClient(create_app({"duplex": model, "salm": _salm()})) as client:
        yield client


def _salm():
    torch.manual_seed(0)
    return slmzoo.build(slmzoo.load_card("salm", preset="tiny")).eval()


def wav(wave: np.ndarray, rate: int = 16000) -> str:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="WAV", subtype="FLOAT")
    return base64.b64encode(buffer.getvalue()).decode()


def chat(client, wave, model="duplex", **fields):
    body = {"model": model, "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": wav(wave), "format": "wav"}}]}], **fields}
    return client.post("/v1/chat/completions", json=body)


def clips():
    return [speechlike(1.6, 0), speechlike(0.9, 1), speechlike(2.3, 2)]


def test_spoken_answer_is_openais_message_audio(client, model):
    wave = clips()[0]
    alone = model.generate_duplex([wave], 16000)
    assert alone.texts[0].strip()  # the random tiny agent says something (else the answer is a 422, tested below)
    response = chat(client, wave, modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"})
    assert response.status_code == 200, response.text
    body = response.json()
    message = body["choices"][0]["message"]
    assert message["content"] is None and message["audio"]["transcript"] == alone.texts[0].strip()
    assert message["audio"]["id"].startswith("audio_") and message["audio"]["expires_at"] > 0
    speech, rate = sf.read(io.BytesIO(base64.b64decode(message["audio"]["data"])), dtype="float32")
    assert rate == model.codec.sampling_rate
    expected = alone.audio[0].numpy()
    assert len(speech) == len(expected) and abs(len(speech) / rate - len(wave) / 16000) <= 0.16  # 2 frames
    assert np.allclose(speech, np.clip(expected, -1, 1), atol=1 / 16000)  # 16-bit PCM of the same waveform
    frames = int(alone.lengths[0])
    assert body["usage"]["prompt_tokens"] == frames and body["usage"]["prompt_tokens_details"]["audio_tokens"] == frames
    assert body["usage"]["completion_tokens_details"]["audio_tokens"] == frames
    raw = chat(client, wave, modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"})
    pcm = np.frombuffer(base64.b64decode(raw.json()["choices"][0]["message"]["audio"]["data"]), dtype="<i2")
    assert len(pcm) == len(expected)


def test_text_only_and_streamed_answers(client, model):
    wave = clips()[1]
    text = model.generate_duplex([wave], 16000, decode_audio=False).texts[0].strip()
    plain = chat(client, wave).json()
    assert plain["choices"][0]["message"] == {"role": "assistant", "content": text}
    assert "completion_tokens_details" not in plain["usage"]
    with client.stream("POST", "/v1/chat/completions", json={
            "model": "duplex", "stream": True, "modalities": ["text", "audio"], "audio": {"format": "flac"},
            "messages": [{"role": "user", "content": [{"type": "input_audio",
                                                        "input_audio": {"data": wav(wave), "format": "wav"}}]}]}) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    audio = [c["choices"][0]["delta"]["audio"] for c in chunks if c["choices"] and "audio" in c["choices"][0]["delta"]]
    assert len(audio) == 1 and audio[0]["transcript"] == text
    speech, rate = sf.read(io.BytesIO(base64.b64decode(audio[0]["data"])))
    assert rate == model.codec.sampling_rate and abs(len(speech) / rate - len(wave) / 16000) <= 0.16  # 2 frames
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_concurrent_requests_answer_as_each_alone(client, model):
    waves = clips()
    alone = [model.generate_duplex([w], 16000, decode_audio=False).texts[0].strip() for w in waves]
    results = [None] * len(waves)

    def send(i):
        results[i] = chat(client, waves[i]).json()["choices"][0]["message"]["content"]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(waves))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == alone


def test_what_a_duplex_model_cannot_take_is_a_400(client):
    wave = clips()[0]
    both = {"model": "duplex", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what comes after four"},
        {"type": "input_audio", "input_audio": {"data": wav(wave), "format": "wav"}}]}]}
    refused = client.post("/v1/chat/completions", json=both)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "no_text_input"
    assert refused.json()["error"]["param"] == "messages[0].content[0]"
    two = {"model": "duplex", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": wav(wave), "format": "wav"}}] * 2}]}
    assert client.post("/v1/chat/completions", json=two).json()["error"]["code"] == "one_audio_part"
    mp3 = chat(client, wave, modalities=["text", "audio"], audio={"format": "mp3"})
    assert mp3.status_code == 400 and mp3.json()["error"]["param"] == "audio.format"
    text_model = chat(client, wave, model="salm", modalities=["text", "audio"])
    assert text_model.status_code == 400 and text_model.json()["error"]["code"] == "no_speech_output"
    upload = client.post("/v1/audio/transcriptions", data={"model": "duplex"},
                         files={"file": ("a.wav", base64.b64decode(wav(wave)), "audio/wav")})
    assert upload.status_code == 400 and upload.json()["error"]["code"] == "not_a_transcriber"


def test_an_agent_that_says_nothing_is_a_422(client, model, monkeypatch):
    from slmzoo_plugins.duplex.model import DuplexOutput

    def silent(audio, sampling_rate=None, lengths=None, decode_audio=True):
        frames = torch.tensor([len(a) // 1280 for a in audio])
        return DuplexOutput(texts=[""] * len(audio), audio=None, sampling_rate=24000,
                            text_tokens=torch.zeros(len(audio), int(frames.max()), dtype=torch.long),
                            audio_codes=torch.zeros(len(audio), int(frames.max()), 4, dtype=torch.long), lengths=frames)

    monkeypatch.setattr(model, "generate_duplex", silent)
    response = chat(client, clips()[0])
    assert response.status_code == 422 and response.json()["error"]["code"] == "empty_answer"
