import os
from pathlib import Path

# Offline before anything imports transformers: tests never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from slmzoo.components import Encoder, EncoderOutput  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO.parent / "shared" / "data" / "digits"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and a busy CI machine cannot oversubscribe it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits_asr(tmp_path_factory) -> dict:
    """The README's worked example, ``salm -p tiny`` from scratch on the digits corpus, trained once per session: the
    digits proof scores it, and the duplex proof fine-tunes it into its scoring ASR (one training instead of two
    from scratch: CI's time). ~6 minutes on 2 idle cores. Returns ``{"run": Path, "train_seconds": float}``."""
    import subprocess
    import sys
    import time

    run = tmp_path_factory.mktemp("digits_asr") / "run"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "slmzoo", "train", "salm", "--preset", "tiny", "--train",
                    str(DIGITS / "train.jsonl"), "--out", str(run), "--no-progress"], check=True)
    return {"run": run, "train_seconds": time.perf_counter() - start}


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def speechlike(seconds: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """A deterministic non-silent test signal: a chirp plus a little noise."""
    r = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.2 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.02 * r.standard_normal(t.size)
    return wave.astype(np.float32)


def audio_share(hidden: torch.Tensor) -> float:
    """How much of ``hidden [B, ...]`` differs between the batch's inputs at the same positions, relative to its
    size: 0 when the output ignores its input (at initialisation: the audio hidden by the init), ~1 when it is all
    input-dependent."""
    return float(((hidden - hidden.mean(0)).pow(2).mean() / hidden.pow(2).mean()).sqrt())


# A fixed card for CLI and error tests: first-party cards evolve, these tests must not.
BASE_CARD = """
name: zoo_base
description: A fixed test card (first-party cards change; these tests must not).
paper: https://example.org/base
year: 2023
encoder:
  type: whisper
  pretrained: openai/whisper-large-v3
  config: {d_model: 1280, encoder_layers: 32, encoder_attention_heads: 20, encoder_ffn_dim: 5120, num_mel_bins: 128,
           decoder_layers: 4, decoder_attention_heads: 20, decoder_ffn_dim: 5120}
adapter: {type: stack, k: 4, hidden_dim: 2048}
fusion: {type: concat}
llm:
  type: hf_causal
  pretrained: Qwen/Qwen3-1.7B
  config: {model_type: qwen3, hidden_size: 2048, num_hidden_layers: 28, num_attention_heads: 16, num_key_value_heads: 8,
           head_dim: 128, intermediate_size: 6144, vocab_size: 151936, max_position_embeddings: 40960,
           rope_theta: 1000000.0, tie_word_embeddings: true}
  dtype: bfloat16
  lora: {r: 128, alpha: 256, dropout: 0.01, target_modules: [q_proj, v_proj]}
prompt: {audio_tag: <|audioplaceholder|>, chat_template: chatml, tasks: {asr: "Transcribe the following:"}}
train: {freeze: [llm], lr: 5.0e-4, warmup_steps: 2500, max_steps: 90000, precision: bf16}
presets:
  tiny:
    encoder:
      pretrained: null
      config: {d_model: 64, encoder_layers: 2, encoder_attention_heads: 4, encoder_ffn_dim: 128, num_mel_bins: 80,
               decoder_layers: 1, decoder_attention_heads: 4, decoder_ffn_dim: 128, max_source_positions: 1500}
    adapter: {k: 2, hidden_dim: 64}
    llm:
      pretrained: null
      tokenizer: bytes
      dtype: float32
      lora: null
      config: {model_type: qwen3, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
               head_dim: 16, intermediate_size: 128, max_position_embeddings: 2048, tie_word_embeddings: true}
    train: {freeze: [], precision: fp32}
"""


class FrameEncoder(Encoder):
    """Waveform -> one 8-dim frame per 160 samples (a stand-in for a real encoder in fusion and LLM tests)."""

    output_dim, frame_rate, sampling_rate = 8, 100.0, 16000

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(160, 8)

    def forward(self, audio, lengths):
        frames = audio[:, : audio.shape[1] // 160 * 160].unflatten(1, (-1, 160)).to(self.proj.weight.dtype)
        return EncoderOutput(self.proj(frames), lengths // 160)


def register_test_component(name: str, kind: str = "adapter", aliases: tuple[str, ...] = (), plugin: str | None = None,
                            **fields):
    """Register an in-process plugin (``plugin``, default ``<name>_plugin``) with one component ``name`` whose
    options are ``fields`` (``field=(type, default)``); it has no factory (the tests that use it never build it).
    Returns the PluginInfo."""
    import pydantic

    import slmzoo
    import slmzoo.plugins
    from slmzoo.registry import ComponentOptions, ComponentSpec

    options = pydantic.create_model(f"{name}_options", __base__=ComponentOptions, **fields)

    class Plugin:
        @staticmethod
        @slmzoo.hookimpl
        def slmzoo_register_components(register):
            register(ComponentSpec(kind=kind, name=name, description="a test component", options=options,
                                   factory="nowhere:Nothing", aliases=aliases))

    return slmzoo.plugins.register_plugin(Plugin, plugin or f"{name}_plugin")

