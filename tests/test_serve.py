"""``slmzoo serve``: the real server process on 127.0.0.1, called with the ``openai`` package and httpx.

One server per module (startup costs seconds): chat with audio, streaming, transcription in every format, auth,
each limit, a concurrent burst equal to the same requests sent alone, disconnect cancels, and a bounded fuzz run.
"""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.serve_utils import REPO, ServerProcess, digit_files, tiny_model

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.slow  # a real server process: end to end
KEY = "test-key"
MODEL = "tiny-salm"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    with ServerProcess(model_dir, "--api-key", KEY, "--served-model-name", MODEL, "--max-upload-mb", "1",
                       "--max-audio-seconds", "8", "--max-audio-parts", "2", "--max-tokens", "1200",
                       log=log) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def auth():
    return {"Authorization": f"Bearer {KEY}"}


def wav_bytes(wave, rate=16000, subtype="PCM_16", fmt="WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, subtype=subtype, format=fmt)
    return buffer.getvalue()


def audio_part(data: bytes, fmt="wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}


def chat_body(parts, **extra) -> dict:
    return {"model": MODEL, "temperature": 0, "max_tokens": 16, **extra,
            "messages": [{"role": "user", "content": parts}]}


def post_chat(server, body, **kwargs) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json=body, headers=auth(), timeout=120, **kwargs)


def metric(server, name: str, **labels) -> float:
    text = httpx.get(server.url + "/metrics", headers=auth()).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(f"slmzoo:{name}") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            head = line.split(" ")[0]
            if head == f"slmzoo:{name}" or head.startswith(f"slmzoo:{name}{{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def assert_error(response: httpx.Response, status: int, code: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error


FLAC = [p.read_bytes() for p in digit_files(6)]


# -- ops and auth --------------------------------------------------------------------------------------------
def test_health_is_public_and_everything_else_needs_the_key(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    for path in ("/v1/models", "/ready", "/metrics", "/"):
        assert_error(httpx.get(server.url + path), 401, "invalid_api_key")
        assert_error(httpx.get(server.url + path, headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(httpx.post(server.url + "/v1/chat/completions", json=chat_body([audio_part(FLAC[0], "flac")])), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(server.url + "/", auth=("any", KEY)).status_code == 200  # the playground's login prompt


def test_models_ready_metrics(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    ready = httpx.get(server.url + "/ready", headers=auth())
    assert ready.status_code == 200 and ready.json()["models"][MODEL]["mode"] == "continuous"
    assert_error(httpx.get(server.url + "/v1/models/nope", headers=auth()), 404, "model_not_found")
    text = httpx.get(server.url + "/metrics", headers=auth()).text
    for name in ("num_requests_running", "num_requests_waiting", "time_to_first_token_seconds",
                 "inter_token_latency_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds",
                 "prompt_tokens_total", "generation_tokens_total", "audio_input_seconds_total", "batch_size",
                 "request_rejected_total"):
        assert f"# TYPE slmzoo:{name} " in text


# -- chat -------------------------------------------------------------------------------------------------
def test_chat_with_audio_parts_and_usage(client):
    parts = [{"type": "text", "text": "Transcribe the following:"}, audio_part(FLAC[0], "flac")]
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": parts}],
                                         max_tokens=12, temperature=0)
    assert out.choices[0].message.role == "assistant" and out.choices[0].message.content
    assert out.choices[0].finish_reason in ("stop", "length")
    details = out.usage.prompt_tokens_details
    assert details.audio_tokens > 0 and out.usage.prompt_tokens > details.audio_tokens
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    # Two audio parts and a system message: more audio tokens, a different prompt.
    two = client.chat.completions.create(model=MODEL, max_tokens=12, temperature=0, messages=[
        {"role": "system", "content": "You are a transcriber."},
        {"role": "user", "content": [*parts, audio_part(FLAC[1], "flac")]}])
    assert two.usage.prompt_tokens_details.audio_tokens > details.audio_tokens
    # wav, as OpenAI's spec names it, decodes like the flac it came from
    wave, rate = sf.read(io.BytesIO(FLAC[0]), dtype="float32")
    as_wav = client.chat.completions.create(model=MODEL, max_tokens=12, temperature=0, messages=[
        {"role": "user", "content": [parts[0], audio_part(wav_bytes(wave, rate, "FLOAT"), "wav")]}])
    assert as_wav.choices[0].message.content == out.choices[0].message.content


def test_streaming_adds_up_to_the_answer(server, client):
    body = chat_body([audio_part(FLAC[2], "flac")], max_tokens=20)
    whole = post_chat(server, body).json()
    stream = client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole["usage"]["completion_tokens"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole["choices"][0]["finish_reason"]
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={**body, "stream": True},
                      headers=auth(), timeout=60) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in raw.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_stop_strings_and_seeded_sampling(server):
    base = post_chat(server, chat_body([audio_part(FLAC[3], "flac")], max_tokens=24)).json()
    text = base["choices"][0]["message"]["content"]
    assert len(text) >= 4
    stop = text[2:4]
    cut = post_chat(server, chat_body([audio_part(FLAC[3], "flac")], max_tokens=24, stop=[stop])).json()
    assert cut["choices"][0]["message"]["content"] == text[: text.find(stop)].strip()
    assert cut["choices"][0]["finish_reason"] == "stop"
    # a stop string at the very start leaves an empty answer: an error, never a 200 with nothing in it
    empty = chat_body([audio_part(FLAC[3], "flac")], max_tokens=24, stop=[text[:2]])
    assert_error(post_chat(server, empty), 422, "empty_answer")
    assert_error(post_chat(server, {**empty, "stream": True}), 422, "empty_answer")  # before the stream starts
    sampled = [post_chat(server, chat_body([audio_part(FLAC[3], "flac")], max_tokens=24, temperature=1.0,
                                           seed=seed)).json()["choices"][0]["message"]["content"] for seed in (7, 7, 8)]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]


def test_audio_url_data_urls_work_and_fetching_is_off(server):
    flac = base64.b64encode(FLAC[0]).decode()
    as_part = post_chat(server, chat_body([audio_part(FLAC[0], "flac")])).json()
    as_url = post_chat(server, chat_body([{"type": "audio_url", "audio_url": {"url": f"data:audio/flac;base64,{flac}"}}]))
    assert as_url.status_code == 200 and as_url.json()["choices"][0]["message"] == as_part["choices"][0]["message"]
    off = post_chat(server, chat_body([{"type": "audio_url", "audio_url": {"url": server.url + "/health"}}]))
    assert_error(off, 400, "url_fetching_disabled")


# -- transcriptions ---------------------------------------------------------------------------------------
def test_transcription_in_every_format(server, client):
    path = digit_files(1)[0]
    chat = post_chat(server, chat_body([audio_part(FLAC[0], "flac")], max_tokens=256)).json()
    expected = chat["choices"][0]["message"]["content"]  # audio alone: the card's transcription instruction
    with open(path, "rb") as f:
        out = client.audio.transcriptions.create(model=MODEL, file=f)
    assert out.text == expected and out.usage.input_token_details.audio_tokens > 0
    duration = sf.info(path).duration
    for fmt in ("text", "srt", "vtt", "verbose_json"):
        r = httpx.post(server.url + "/v1/audio/transcriptions", headers=auth(), timeout=60,
                       files={"file": (path.name, FLAC[0], "audio/flac")},
                       data={"model": MODEL, "response_format": fmt, "language": "en"})
        assert r.status_code == 200, r.text
        if fmt == "text":
            assert r.text.strip() == expected.strip()
        elif fmt == "srt":
            assert re.match(r"1\n00:00:00,000 --> 00:00:0\d,\d{3}\n", r.text) and expected in r.text
        elif fmt == "vtt":
            assert r.text.startswith("WEBVTT\n\n00:00:00.000 --> ") and expected in r.text
        else:
            body = r.json()
            assert body["text"] == expected and body["language"] == "en"
            assert isinstance(body["duration"], float) and abs(body["duration"] - duration) < 0.01
            assert body["segments"][0]["end"] == body["duration"] and body["segments"][0]["avg_logprob"] < 0
    bad_format = httpx.post(server.url + "/v1/audio/transcriptions", headers=auth(),
                            files={"file": ("a.flac", FLAC[0])}, data={"model": MODEL, "response_format": "xml"})
    assert_error(bad_format, 400)


def test_transcription_prompt_reaches_the_prompt_tokens(server, model_dir):
    """OpenAI's ``prompt`` (earlier text, spellings) joins the card's instruction by its ``prompt.context_format``."""
    import slmzoo

    processor = slmzoo.load_processor(model_dir)
    instruction = processor.prompt.tasks["asr"]
    added = (len(processor.encode(processor.formatter.with_context(instruction, "six five")).input_ids)
             - len(processor.encode(instruction).input_ids))
    assert added == len(" Context: six five")  # the byte tokenizer: one token per byte

    def transcribe(**data):
        r = httpx.post(server.url + "/v1/audio/transcriptions", headers=auth(), timeout=60,
                       files={"file": ("a.flac", FLAC[2], "audio/flac")}, data={"model": MODEL, **data})
        assert r.status_code == 200, r.text
        return r.json()

    plain, prompted, blank = transcribe(), transcribe(prompt="six five"), transcribe(prompt="  ")
    assert prompted["usage"]["input_tokens"] == plain["usage"]["input_tokens"] + added
    assert prompted["usage"]["input_token_details"]["audio_tokens"] == plain["usage"]["input_token_details"]["audio_tokens"]
    assert blank == plain


def test_transcription_streaming_events(server):
    with httpx.stream("POST", server.url + "/v1/audio/transcriptions", headers=auth(), timeout=60,
                      files={"file": ("a.flac", FLAC[1], "audio/flac")}, data={"model": MODEL, "stream": "true"}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    plain = httpx.post(server.url + "/v1/audio/transcriptions", headers=auth(), timeout=60,
                       files={"file": ("a.flac", FLAC[1])}, data={"model": MODEL}).json()
    assert {e["type"] for e in events[:-1]} <= {"transcript.text.delta"}
    assert events[-1]["type"] == "transcript.text.done" and events[-1]["text"] == plain["text"]
    assert "".join(e["delta"] for e in events[:-1]) == plain["text"]


def test_translation_needs_a_translation_task(server):
    r = httpx.post(server.url + "/v1/audio/translations", headers=auth(), files={"file": ("a.flac", FLAC[0])},
                   data={"model": MODEL})
    assert_error(r, 400, "no_translation_task")


# -- limits and bad input -------------------------------------------------------------------------------------
def test_each_limit_and_bad_input(server):
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, 16000 * 40).astype(np.float32)
    big = wav_bytes(noise)  # 1.28 MB > 1 MiB
    assert_error(httpx.post(server.url + "/v1/audio/transcriptions", headers=auth(),
                            files={"file": ("big.wav", big)}, data={"model": MODEL}), 413)
    assert_error(post_chat(server, chat_body([audio_part(big)])), 413)

    def chunked():  # no Content-Length: the cap is counted while the body streams in
        for _ in range(40):
            yield b"x" * 65536
    assert_error(httpx.post(server.url + "/v1/chat/completions", headers=auth(), content=chunked()), 413,
                 "request_too_large")
    long = wav_bytes(noise[: 8000 * 10], rate=8000)  # 10 s at 8 kHz: small, but over --max-audio-seconds 8
    assert_error(post_chat(server, chat_body([audio_part(long)])), 413, "audio_too_long")
    three = [audio_part(FLAC[0], "flac")] * 3
    assert_error(post_chat(server, chat_body(three)), 400, "too_many_audio_parts")
    four_channels = wav_bytes(np.zeros((1600, 4), np.float32))
    assert_error(post_chat(server, chat_body([audio_part(four_channels)])), 400, "too_many_channels")
    nan = wav_bytes(np.full(1600, np.nan, np.float32), subtype="FLOAT")
    assert_error(post_chat(server, chat_body([audio_part(nan)])), 400, "invalid_audio")
    assert_error(post_chat(server, chat_body([audio_part(wav_bytes(np.zeros(0, np.float32)))])), 400, "empty_audio")
    assert_error(post_chat(server, chat_body([{"type": "input_audio", "input_audio": {"data": "@@@", "format": "wav"}}])),
                 400, "invalid_base64")
    assert_error(post_chat(server, chat_body([audio_part(b"RIFF garbage")])), 400, "invalid_audio")
    assert_error(post_chat(server, {**chat_body([audio_part(FLAC[0])]), "model": "nope"}), 404, "model_not_found")
    assert_error(post_chat(server, chat_body([audio_part(FLAC[0])], temperature="hot")), 400)
    assert_error(post_chat(server, chat_body([audio_part(FLAC[0])], max_tokens=5000)), 400)
    assert_error(post_chat(server, chat_body([{"type": "text", "text": "no audio"}])), 400, "no_audio")
    assert_error(httpx.post(server.url + "/v1/chat/completions", headers=auth(), content=b"{not json"), 400,
                 "invalid_json")
    assert metric(server, "request_rejected_total", reason="audio_too_long") >= 1


def test_bad_request_in_a_burst_fails_alone(server):
    """A clip too short for the encoder fails in the batched prefill; its companions still get their answers."""
    good = [chat_body([audio_part(FLAC[i], "flac")]) for i in range(3)]
    alone = [post_chat(server, b).json()["choices"][0]["message"]["content"] for b in good]
    tiny = chat_body([audio_part(wav_bytes(np.zeros(4, np.float32)))])
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda b: post_chat(server, b), [good[0], tiny, good[1], good[2]]))
    assert_error(answers[1], 400, "invalid_input")
    assert [answers[i].json()["choices"][0]["message"]["content"] for i in (0, 2, 3)] == alone


# -- batching --------------------------------------------------------------------------------------------
def test_concurrent_burst_equals_each_request_alone(server):
    bodies = [chat_body([audio_part(FLAC[i % 6], "flac")], max_tokens=8 + 4 * (i % 5)) for i in range(16)]
    alone = [post_chat(server, b).json()["choices"][0]["message"]["content"] for b in bodies]
    assert len(set(alone)) > 3  # the answers differ: the comparison below means something
    batches_before = metric(server, "batch_size_sum")
    steps_before = metric(server, "batch_size_count")
    with ThreadPoolExecutor(16) as pool:
        burst = list(pool.map(lambda b: post_chat(server, b), bodies))
    assert [r.json()["choices"][0]["message"]["content"] for r in burst] == alone
    rows_per_step = (metric(server, "batch_size_sum") - batches_before) / (metric(server, "batch_size_count")
                                                                           - steps_before)
    assert rows_per_step > 2  # they really were decoded together


def test_memory_fusion_burst_equals_each_request_alone(tmp_path_factory):
    """Audio Flamingo (gated cross-attention to an audio memory) in continuous batches: the requests of a burst
    join and leave the running batch, and each answer equals the same request sent alone."""
    model = tiny_model(tmp_path_factory.mktemp("serve-flamingo") / "model", card="audio-flamingo")
    with ServerProcess(model, "--served-model-name", MODEL) as flamingo:
        assert httpx.get(flamingo.url + "/ready").json()["models"][MODEL]["mode"] == "continuous"
        bodies = [chat_body([audio_part(FLAC[i % 6], "flac")], max_tokens=6 + 3 * (i % 4)) for i in range(12)]

        def post(body):
            return httpx.post(flamingo.url + "/v1/chat/completions", json=body, timeout=120)

        alone = [post(b).json() for b in bodies]
        answers = [a["choices"][0]["message"]["content"] for a in alone]
        assert len(set(answers)) > 3  # the answers differ: the comparison below means something
        steps_before = metric(flamingo, "batch_size_count")
        rows_before = metric(flamingo, "batch_size_sum")
        with ThreadPoolExecutor(12) as pool:
            burst = [r.json() for r in pool.map(post, bodies)]
        assert [r["choices"][0]["message"]["content"] for r in burst] == answers
        assert [r["usage"] for r in burst] == [a["usage"] for a in alone]
        assert all(0 < a["usage"]["prompt_tokens_details"]["audio_tokens"] < a["usage"]["prompt_tokens"] for a in alone)
        rows_per_step = ((metric(flamingo, "batch_size_sum") - rows_before)
                         / (metric(flamingo, "batch_size_count") - steps_before))
        assert rows_per_step > 2  # they really were decoded together


def test_client_disconnect_stops_decoding(server):
    body = chat_body([audio_part(FLAC[0], "flac")], max_tokens=1000, ignore_eos=True, stream=True)
    generated = metric(server, "generation_tokens_total")
    cancelled = metric(server, "request_cancelled_total")
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=auth(), timeout=60) as r:
        for line in r.iter_lines():
            if '"content"' in line and '"content": ""' not in line:
                break
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and metric(server, "num_requests_running") > 0:
        time.sleep(0.1)
    assert metric(server, "num_requests_running") == 0
    assert metric(server, "request_cancelled_total") == cancelled + 1
    assert metric(server, "generation_tokens_total") - generated < 900


def test_client_disconnect_stops_a_non_streaming_request(server):
    body = json.dumps(chat_body([audio_part(FLAC[1], "flac")], max_tokens=1000, ignore_eos=True)).encode()
    cancelled = metric(server, "request_cancelled_total")
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 10
        while metric(server, "num_requests_running") == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and metric(server, "request_cancelled_total") == cancelled:
        time.sleep(0.1)
    assert metric(server, "request_cancelled_total") == cancelled + 1
    assert metric(server, "num_requests_running") == 0


# -- fuzz -----------------------------------------------------------------------------------------------------
def malformed(i: int, rng) -> tuple[str, dict]:
    """The ``i``-th malformed request: (path, httpx keyword arguments)."""
    flac = base64.b64encode(FLAC[i % 6]).decode()
    kind = i % 10
    if kind == 0:
        body = chat_body([{"type": "input_audio", "input_audio": {"data": flac[: rng.integers(1, len(flac))],
                                                                   "format": "flac"}}])
    elif kind == 1:
        body = chat_body([{"type": "input_audio", "input_audio": {
            "data": base64.b64encode(rng.bytes(int(rng.integers(0, 3000)))).decode(), "format": "wav"}}])
    elif kind == 2:
        body = chat_body([{"type": "input_audio", "input_audio": {"data": flac, "format": 7}}])
    elif kind == 3:
        body = chat_body([audio_part(wav_bytes(np.full(int(rng.integers(1, 4000)), np.nan, np.float32),
                                              subtype="FLOAT"))])
    elif kind == 4:
        body = chat_body([audio_part(b"")])
    elif kind == 5:
        return "/v1/chat/completions", {"json": chat_body([audio_part(FLAC[0], "flac")]),
                                        "headers": {**auth(), "X-Huge": "a" * int(rng.integers(10_000, 100_000))}}
    elif kind == 6:
        bodies = [[], "str", 3, None, {"model": 1}, {"model": MODEL, "messages": "hi"},
                  {"model": MODEL, "messages": [{"role": "user", "content": 5}]},
                  {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}]
        body = bodies[int(rng.integers(len(bodies)))]
    elif kind == 7:
        body = chat_body([{"type": "input_audio", "input_audio": {"data": flac, "format": "flac", "extra": 1}},
                          {"type": "video", "video": {}}], unknown_field={"x": 1})
    elif kind == 8:
        return "/v1/audio/transcriptions", {"headers": auth(), "data": {"model": MODEL, "temperature": "x"},
                                            "files": {"file": ("a.wav", rng.bytes(200))}}
    else:
        return "/v1/chat/completions", {"headers": {**auth(), "Content-Type": "application/json"},
                                        "content": rng.bytes(int(rng.integers(0, 2000)))}
    return "/v1/chat/completions", {"json": body, "headers": auth()}


def test_fuzz_malformed_requests_keep_the_server_healthy(server):
    import psutil

    process = psutil.Process(server.pid)
    good = chat_body([audio_part(FLAC[5], "flac")])
    expected = post_chat(server, good).json()
    rss_before = process.memory_info().rss
    rng = np.random.default_rng(0)
    statuses = {}
    start = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for i in range(1000):
            path, kwargs = malformed(i, rng)
            try:
                status = http.post(path, **kwargs).status_code
            except httpx.RemoteProtocolError:
                status = "closed"  # the huge header: uvicorn closes the connection
            statuses[status] = statuses.get(status, 0) + 1
            assert status == "closed" or status < 500, (i, path, status)
    assert time.monotonic() - start < 120
    assert statuses.get(200, 0) <= 200  # only the huge-header requests are well-formed
    after = post_chat(server, good).json()
    assert after["choices"] == expected["choices"]
    assert httpx.get(server.url + "/ready", headers=auth()).status_code == 200
    assert process.memory_info().rss - rss_before < 150 * 2**20


# -- a second server: queue and deadline -------------------------------------------------------------------------
def test_two_models_queue_full_and_deadline(model_dir):
    with ServerProcess(model_dir, str(model_dir), "--served-model-name", MODEL, "--served-model-name", "second",
                       "--max-queue", "2", "--max-batch-size", "1", "--request-timeout", "1") as small:
        assert [m["id"] for m in httpx.get(small.url + "/v1/models").json()["data"]] == [MODEL, "second"]
        body = chat_body([audio_part(wav_bytes(np.zeros(4000, np.float32)))], max_tokens=1000, ignore_eos=True)
        url = small.url + "/v1/chat/completions"
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(httpx.post, url, json=body, timeout=60) for _ in range(2)]
            time.sleep(0.5)
            busy = httpx.post(url, json=body, timeout=60)
            ready = httpx.get(small.url + "/ready")
            answers = [f.result() for f in futures]
        assert_error(busy, 429, "queue_full")
        assert busy.headers["Retry-After"] == "1" and ready.status_code == 503
        codes = sorted(a.status_code for a in answers)
        assert codes[0] in (408, 504) and codes[1] in (408, 504), [a.text for a in answers]  # 1000 tokens > 1 s
        assert httpx.get(small.url + "/ready").status_code == 200


# -- the command line -------------------------------------------------------------------------------------
def test_serve_help_imports_neither_torch_nor_fastapi():
    probe = ("import runpy, sys; sys.argv = ['slmzoo', 'serve', '--help']\n"
             "try:\n    runpy.run_module('slmzoo', run_name='__main__', alter_sys=True)\n"
             "except SystemExit:\n    pass\n"
             "print('HEAVY=' + ','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('torch', 'transformers', 'fastapi', 'uvicorn', 'starlette'))), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "--max-upload-mb" in proc.stdout and "HEAVY=\n" in proc.stderr, proc.stderr[-2000:]
