"""The FastAPI app: OpenAI's routes over one :class:`~slmzoo.serving.scheduler.Scheduler` per served model.

Every route but ``/health`` needs the API key when one is set (a global guard, not a per-route check, so no
route is left open by mistake). Bodies are capped while they stream in, before anything is parsed or decoded.
Every error is OpenAI's envelope with a fitting status; a 200 always carries an answer.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from slmzoo.serving import transcripts
from slmzoo.serving.audio_input import Clip, data_url_bytes, decode_audio, decode_base64, fetch_url
from slmzoo.serving.errors import APIError, bad_request, envelope
from slmzoo.serving.limits import Limits
from slmzoo.serving.metrics import Metrics
from slmzoo.serving.scheduler import Job, Scheduler
from slmzoo.serving.schemas import (
    ChatRequest,
    InputAudioPart,
    TextPart,
    chat_chunk,
    chat_completion,
    completion_id,
    speech_bytes,
    speech_message,
    usage,
    validate,
)

log = logging.getLogger("slmzoo.serve")
PUBLIC_PATHS = {"/health"}
TRANSLATION_TASKS = ("translate", "translation", "ast", "st", "s2tt")


class ClientGone(Exception):
    pass


class Guard:
    """ASGI middleware: the API key on every route but ``/health``, then the body cap, counted while the body
    streams in (a wrong or missing ``Content-Length`` cannot get past it)."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int, metrics: Metrics):
        self.app, self.api_key, self.max_body, self.metrics = app, api_key, max_body_bytes, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key and scope["path"] not in PUBLIC_PATHS and not self._authorized(headers):
            self.metrics.rejected.inc(reason="unauthorized")
            # The playground page asks a browser for the key (a login prompt); API clients are told to use Bearer.
            challenge = 'Basic realm="slmzoo serve"' if scope["path"] == "/" else "Bearer"
            return await _send_error(send, APIError(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                                                    "invalid_api_key", headers={"WWW-Authenticate": challenge}))
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            self.metrics.rejected.inc(reason="body_too_large")
            return await _send_error(send, self._too_large(int(length)))
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise self._too_large(seen)
            return message

        return await self.app(scope, counted_receive, send)

    def _authorized(self, headers: dict[str, str]) -> bool:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":  # a browser's login prompt for the playground: any user, the key as password
            try:
                value = base64.b64decode(value).decode().partition(":")[2]
            except ValueError:
                return False
        elif scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.strip().encode(), self.api_key.encode())

    def _too_large(self, size: int) -> APIError:
        return APIError(413, f"the request body is over {self.max_body} bytes ({size} so far); the limit follows "
                             "--max-upload-mb", "request_too_large")


async def _send_error(send, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class Server:
    """The served models, their schedulers and the request handling shared by the routes."""

    def __init__(self, models: dict[str, Any], limits: Limits, metrics: Metrics):
        self.limits, self.metrics = limits, metrics
        self.models = models
        self.schedulers = {name: Scheduler(model, name, limits, metrics) for name, model in models.items()}
        self.created = int(time.time())

    def scheduler(self, name: Any) -> Scheduler:
        if not name or not isinstance(name, str):
            raise bad_request("model is required (GET /v1/models lists the served models)", "model", "missing_model")
        if name not in self.schedulers:
            raise APIError(404, f"model {name!r} is not served here; GET /v1/models lists: "
                                f"{', '.join(self.schedulers)}", "model_not_found", "model")
        return self.schedulers[name]

    # -- audio -----------------------------------------------------------------------------------------------
    async def clip(self, data: bytes, sampling_rate: int, param: str) -> Clip:
        clip = await asyncio.to_thread(decode_audio, data, self.limits, sampling_rate, param)
        self.metrics.audio_seconds.inc(clip.seconds)
        return clip

    async def part_bytes(self, part, param: str) -> bytes:
        if isinstance(part, InputAudioPart):
            return decode_base64(part.input_audio.data, self.limits, f"{param}.input_audio.data")
        url = part.audio_url.url
        if url.startswith("data:"):
            return data_url_bytes(url, self.limits, f"{param}.audio_url.url")
        return await asyncio.to_thread(fetch_url, url, self.limits, f"{param}.audio_url.url")

    async def chat_inputs(self, req: ChatRequest, scheduler: Scheduler) -> tuple[list[dict], list, float]:
        """OpenAI messages -> the card's chat (one audio tag per audio part, in order) and the decoded clips.

        A request whose messages carry no text at all gets the card's default instruction (its ``prompt:``)."""
        if req.wants_speech and scheduler.mode != "duplex":
            raise bad_request(f"model {scheduler.name!r} answers in text only: drop \"audio\" from modalities",
                              "modalities", "no_speech_output")
        if scheduler.mode == "duplex":
            return await self.user_channel(req, scheduler)
        processor = scheduler.model.processor
        parts = [(m, p) for m in req.messages if isinstance(m.content, list) for p in m.content
                 if not isinstance(p, TextPart)]
        if len(parts) > self.limits.max_audio_parts:
            raise bad_request(f"{len(parts)} audio parts; at most {self.limits.max_audio_parts} per request",
                              "messages", "too_many_audio_parts")
        if not parts:
            raise bad_request("the request has no audio: add an input_audio part (this server serves speech "
                              "models)", "messages", "no_audio")
        messages, waves, seconds, has_text = [], [], 0.0, False
        for i, message in enumerate(req.messages):
            role = "system" if message.role == "developer" else message.role
            pieces = [message.content] if isinstance(message.content, str) else []
            for j, part in enumerate(message.content if isinstance(message.content, list) else []):
                param = f"messages[{i}].content[{j}]"
                if isinstance(part, TextPart):
                    pieces.append(part.text)
                    continue
                if role != "user":
                    raise bad_request(f"audio is accepted in user messages only, not {message.role}", param)
                clip = await self.clip(await self.part_bytes(part, param), processor.sampling_rate, param)
                waves.append(clip.wave)
                seconds += clip.seconds
                pieces.append(processor.audio_tag)
            has_text |= role == "user" and any(p.strip() for p in pieces if p != processor.audio_tag)
            messages.append({"role": role, "content": " ".join(p.strip() for p in pieces if p.strip())})
        if not has_text:  # audio alone: the card's default task, as `slmzoo generate` without --prompt
            users = [m for m in messages if m["role"] == "user"]
            default = processor.formatter.messages(None, num_audio=users[-1]["content"].count(processor.audio_tag))
            users[-1]["content"] = next(m["content"] for m in default if m["role"] == "user")
        return messages, waves, seconds

    async def user_channel(self, req: ChatRequest, scheduler: Scheduler) -> tuple[list[dict], list, float]:
        """A duplex model's request: exactly one audio part, the user channel; it takes no instruction (it answers
        what the user says), so a text part is refused rather than ignored."""
        parts = [(i, j, p) for i, m in enumerate(req.messages) if isinstance(m.content, list)
                 for j, p in enumerate(m.content)]
        texts = [(i, j) for i, j, p in parts if isinstance(p, TextPart) and p.text.strip()]
        texts += [(i, None) for i, m in enumerate(req.messages) if isinstance(m.content, str) and m.content.strip()]
        if texts:
            i, j = texts[0]
            raise bad_request(f"model {scheduler.name!r} is a full-duplex speech-to-speech model: it takes no text, "
                              "only the user's speech (one audio part)",
                              f"messages[{i}].content" + (f"[{j}]" if j is not None else ""), "no_text_input")
        audio = [(i, j, p) for i, j, p in parts if not isinstance(p, TextPart)]
        if len(audio) != 1:
            raise bad_request(f"{len(audio)} audio parts: a duplex model listens to one user channel (one audio "
                              "part)", "messages", "one_audio_part")
        i, j, part = audio[0]
        if req.messages[i].role != "user":
            raise bad_request(f"audio is accepted in user messages only, not {req.messages[i].role}",
                              f"messages[{i}].content[{j}]")
        param = f"messages[{i}].content[{j}]"
        clip = await self.clip(await self.part_bytes(part, param), scheduler.model.sampling_rate, param)
        return [], [clip.wave], clip.seconds

    def job(self, messages, waves, seconds, max_tokens, **sampling) -> tuple[Job, asyncio.Queue]:
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        if max_tokens > self.limits.max_tokens:
            raise bad_request(f"max_tokens {max_tokens} is over this server's limit {self.limits.max_tokens}",
                              "max_tokens")
        job = Job(messages=messages, waves=waves, audio_seconds=seconds, max_tokens=max_tokens,
                  deadline=time.monotonic() + self.limits.deadline_seconds(seconds),
                  send=lambda event: loop.call_soon_threadsafe(queue.put_nowait, event), **sampling)
        return job, queue

    async def next_event(self, request: Request, job: Job, queue: asyncio.Queue):
        """The next event of ``job``; a client that went away cancels the job (decoding stops at the next step).

        The body is read by now, so the ASGI ``receive`` returns only when the client disconnects (what
        ``StreamingResponse`` listens for too): that is the watch, not polling ``is_disconnected``."""
        getter = asyncio.ensure_future(queue.get())
        watch = asyncio.ensure_future(_disconnect(request))
        try:
            done, _ = await asyncio.wait({getter, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not getter.done():
                getter.cancel()
        if getter not in done:
            job.cancel()
            raise ClientGone
        event = getter.result()
        if event[0] == "error":
            raise event[1]
        return event

    async def result(self, request: Request, job: Job, queue: asyncio.Queue) -> dict:
        while True:
            kind, payload = await self.next_event(request, job, queue)
            if kind == "done":
                return payload


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def sse(data: Any) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def create_app(models: dict[str, Any], limits: Limits | None = None, api_key: str | None = None) -> FastAPI:
    """The app serving ``models`` (served name -> loaded model). Schedulers start with the app."""
    limits = limits or Limits()
    metrics = Metrics()
    server = Server(models, limits, metrics)

    async def lifespan(app):
        for scheduler in server.schedulers.values():
            scheduler.start()
            log.info("serving %s (%s batching)", scheduler.name, scheduler.mode)
        log.info("limits: %s", limits.describe())
        yield
        for scheduler in server.schedulers.values():
            scheduler.stop()

    app = FastAPI(title="slmzoo serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(APIError)
    async def _api_error(request, error: APIError):
        if not error.counted:
            metrics.rejected.inc(reason=error.code)
        return error_response(error)

    @app.exception_handler(HTTPException)
    async def _http_error(request, error: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return JSONResponse(envelope(str(error.detail), "invalid_request_error", None, code),
                            status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, error):
        return error_response(bad_request(str(error.errors()[0].get("msg", "invalid request"))))

    @app.exception_handler(Exception)
    async def _unexpected(request, error):
        log.exception("unexpected error")
        return JSONResponse(envelope(f"internal error ({type(error).__name__})", "server_error", None,
                                     "internal_error"), status_code=500)

    # -- ops -------------------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        busy = [s.name for s in server.schedulers.values() if not s.ready or s.full()]
        if busy:
            return JSONResponse({"status": "busy", "models": busy}, status_code=503, headers={"Retry-After": "1"})
        return {"status": "ready", "models": {s.name: {"mode": s.mode, "load": s.load()}
                                              for s in server.schedulers.values()}}

    @app.get("/metrics")
    async def metrics_route():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [_model_card(name, server.created) for name in server.schedulers]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str):
        return _model_card(server.scheduler(name).name, server.created)

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return HTMLResponse(resources.files("slmzoo.serving").joinpath("playground.html").read_text())

    # -- chat completions ------------------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = validate(ChatRequest, await _json(request))
        scheduler = server.scheduler(req.model)
        messages, waves, seconds = await server.chat_inputs(req, scheduler)
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise bad_request("stop: at most 4 non-empty strings", "stop")
        job, queue = server.job(messages, waves, seconds,
                                req.max_completion_tokens or req.max_tokens or limits.default_max_tokens,
                                temperature=req.temperature or 0.0, top_p=req.top_p or 1.0, seed=req.seed,
                                stop=stop, ignore_eos=req.ignore_eos, speech=req.wants_speech)
        speech_format = (req.audio.format if req.audio is not None else "wav")
        scheduler.submit(job)
        id_ = completion_id()
        try:
            if not req.stream:
                done = await server.result(request, job, queue)
                return chat_completion(id_, req.model, done["text"], done["finish_reason"], _usage(done),
                                       audio=_speech(done, speech_format))
            first = await server.next_event(request, job, queue)  # errors before the first token keep their status
        except ClientGone:
            return Response(status_code=499)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def events():
            event = first
            try:
                yield sse(chat_chunk(id_, req.model, {"role": "assistant", "content": ""}))
                while True:
                    kind, payload = event
                    if kind == "delta" and not req.wants_speech:
                        yield sse(chat_chunk(id_, req.model, {"content": payload}))
                    elif kind == "done" and req.wants_speech:  # the speech, its transcript with it
                        yield sse(chat_chunk(id_, req.model, {"audio": _speech(payload, speech_format)}))
                    if kind == "done":
                        yield sse(chat_chunk(id_, req.model, {}, payload["finish_reason"]))
                        if include_usage:
                            yield sse(chat_chunk(id_, req.model, None, usage_=_usage(payload)))
                        yield sse("[DONE]")
                        return
                    event = await server.next_event(request, job, queue)
            except APIError as error:
                yield sse(error.body())
            except ClientGone:
                return
            finally:
                job.cancel()  # the client went away mid-stream (or we are done): decoding stops

        return StreamingResponse(events(), media_type="text/event-stream")

    # -- transcriptions and translations -------------------------------------------------------------------------
    async def speech_to_text(request: Request, task: str):
        form = await request.form(max_files=1, max_fields=32)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise bad_request("file: a multipart file upload is required", "file", "missing_file")
        scheduler = server.scheduler(form.get("model"))
        if scheduler.mode == "duplex":
            raise bad_request(f"model {scheduler.name!r} is a full-duplex speech-to-speech model, not a transcriber: "
                              "send its user channel to /v1/chat/completions", "model", "not_a_transcriber")
        fmt = form.get("response_format") or "json"
        if fmt not in transcripts.FORMATS:
            raise bad_request(f"response_format must be one of {', '.join(transcripts.FORMATS)}", "response_format")
        temperature = _form_float(form.get("temperature"), "temperature", 0.0, 1.0)
        stream = (form.get("stream") or "false").lower() in ("true", "1")
        formatter = scheduler.model.processor.formatter
        # OpenAI's prompt (earlier text of the recording, spellings, a style) joins the card's task instruction
        # (a text field: the one file the form may hold is the audio)
        instruction = formatter.with_context(_task_instruction(scheduler.model, task), form.get("prompt"))
        clip = await server.clip(await upload.read(), scheduler.model.processor.sampling_rate, "file")
        messages = formatter.messages(instruction, num_audio=1)
        job, queue = server.job(messages, [clip.wave], clip.seconds, limits.default_max_tokens,
                                temperature=temperature)
        scheduler.submit(job)
        try:
            if not stream:
                done = await server.result(request, job, queue)
                body, media = transcripts.render(fmt, done, clip.seconds, task, form.get("language"), temperature)
                return Response(body, media_type=media)
            first = await server.next_event(request, job, queue)
        except ClientGone:
            return Response(status_code=499)

        async def events():
            event = first
            try:
                while event[0] == "delta":
                    yield sse({"type": "transcript.text.delta", "delta": event[1]})
                    event = await server.next_event(request, job, queue)
                yield sse({"type": "transcript.text.done", "text": event[1]["text"],
                           "usage": transcripts.token_usage(event[1])})
            except APIError as error:
                yield sse(error.body())
            except ClientGone:
                return
            finally:
                job.cancel()

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request):
        return await speech_to_text(request, "transcribe")

    @app.post("/v1/audio/translations")
    async def translations(request: Request):
        return await speech_to_text(request, "translate")

    app.add_middleware(Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes, metrics=metrics)
    return app


def _model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "slmzoo"}


def _usage(done: dict) -> dict:
    speech = done.get("speech")
    return usage(done["prompt_tokens"], done["completion_tokens"], done["audio_tokens"],
                 None if speech is None else done["completion_tokens"])


def _speech(done: dict, format: str) -> dict | None:
    """OpenAI's ``message.audio`` of a done event with speech (None without)."""
    if done.get("speech") is None:
        return None
    return speech_message(done["text"], speech_bytes(done["speech"], done["sampling_rate"], format))


async def _json(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("the request body is not valid JSON", None, "invalid_json") from None


def _form_float(value, param: str, low: float, high: float) -> float:
    if value is None or value == "":
        return low
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise bad_request(f"{param} must be a number", param) from None
    if not low <= number <= high:
        raise bad_request(f"{param} must be between {low:g} and {high:g}", param)
    return number


def _task_instruction(model, task: str) -> str:
    """The card's instruction for ``task``: its default task (``asr``) for transcription; a translation task
    (``ast``, ``st``, ...) for translation, which a card without one does not offer (400)."""
    tasks = model.processor.prompt.tasks
    if task == "transcribe":
        instruction = tasks.get("asr", tasks.get(model.processor.prompt.default_task))
        if instruction is None:
            raise bad_request(f"this model's card has no transcription task (its tasks: {', '.join(tasks)})", "model",
                              "no_transcription_task")
        return instruction
    for name in TRANSLATION_TASKS:
        if name in tasks:
            return tasks[name]
    raise bad_request(f"this model's card has no translation task (its tasks: {', '.join(tasks)})", "model",
                      "no_translation_task")
