"""``slmzoo serve``: an OpenAI-compatible server for cards and trained models. ``register(app)`` adds it.

Importing this module imports neither torch nor FastAPI (``slmzoo --help`` imports it); the server's modules load
when the command runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from slmzoo.cli.common import CLIError, PresetOpt, SetOpt, handle_errors, load_model

DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
          "fp32": "float32", "float32": "float32"}


@handle_errors()
def serve(
    models: Annotated[list[str], typer.Argument(
        metavar="MODEL...", help="Cards (with --preset), saved models, run folders or hf-hub: sources.")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8000,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", envvar="SLMZOO_API_KEY", help="Required as 'Authorization: Bearer KEY' on every route but "
                                                   "/health.")] = None,
    served_model_name: Annotated[Optional[list[str]], typer.Option(
        "--served-model-name", help="The name clients use, one per MODEL (default: the card's name).")] = None,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", min=1, help="Rows decoded together.")] = 16,
    max_audio_seconds: Annotated[Optional[float], typer.Option(
        "--max-audio-seconds", min=0.01, help="Longest clip (default: the card's window, e.g. 30 s for Whisper "
                                              "encoders that do not split long audio; else 600 s).")] = None,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.001,
                                                 help="Largest audio file, in MiB.")] = 25.0,
    max_queue: Annotated[int, typer.Option("--max-queue", min=1,
                                           help="Requests queued or running per model; more get 429.")] = 256,
    max_audio_parts: Annotated[int, typer.Option("--max-audio-parts", min=1, help="Audio parts per request.")] = 8,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="The most tokens a request may ask for.")
                          ] = 1024,
    request_timeout: Annotated[float, typer.Option(
        "--request-timeout", min=0.01, help="Per-request deadline in seconds; longer audio gets 2.5 s per second "
                                            "of audio if that is more (408 while queued, 504 after).")] = 120.0,
    allow_audio_host: Annotated[Optional[list[str]], typer.Option(
        "--allow-audio-host", help="Allow fetching http(s) audio_url parts from this host (repeatable; off by "
                                   "default; private and loopback addresses are refused anyway).")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cuda, cpu, ... (default: cuda if present).")
                      ] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="bf16, fp16 or fp32 (default: as loaded).")] = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
) -> None:
    """Serve models over OpenAI's API: /v1/chat/completions (audio parts), /v1/audio/transcriptions and
    /translations, /v1/models, /health, /ready, /metrics and a playground page at /."""
    try:
        import uvicorn

        from slmzoo.serving.app import create_app
        from slmzoo.serving.limits import MIB, Limits, default_audio_seconds
    except ImportError as error:
        raise CLIError(f"slmzoo serve needs the serve extra ({error.name} is missing): "
                       'pip install "slmzoo[serve]"') from None
    if served_model_name and len(served_model_name) != len(models):
        raise CLIError(f"--served-model-name: {len(served_model_name)} names for {len(models)} models")
    if dtype is not None and dtype.lower() not in DTYPES:
        raise CLIError(f"--dtype {dtype!r}: use one of bf16, fp16, fp32")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = {}
    for i, source in enumerate(models):
        model = load_model(source, preset, set_, device=device)
        if dtype is not None:
            model = model.to(getattr(torch, DTYPES[dtype.lower()]))
        name = served_model_name[i] if served_model_name else _default_name(source, model)
        if name in loaded:
            raise CLIError(f"two models are named {name!r}: give each a --served-model-name")
        loaded[name] = model
    seconds = max_audio_seconds or min(default_audio_seconds(m) for m in loaded.values())
    limits = Limits(max_upload_bytes=int(max_upload_mb * MIB), max_audio_seconds=seconds, max_queue=max_queue,
                    max_batch_size=max_batch_size, max_audio_parts=max_audio_parts, max_tokens=max_tokens,
                    default_max_tokens=min(256, max_tokens), deadline_base_seconds=request_timeout, allowed_audio_hosts=list(allow_audio_host or []))
    app = create_app(loaded, limits, api_key)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


def _default_name(source: str, model) -> str:
    card = getattr(model, "card", None)
    name = getattr(card, "name", None)
    path = Path(source)
    if path.exists() and path.is_dir():
        return path.resolve().name
    return name or source


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
