"""Proof that the recipe learns: the salm tiny preset from scratch on the spoken-digits corpus, on CPU, then
``slmzoo eval`` on the test split must reach WER <= 10%. The run is the session's ``digits_asr`` (conftest), which the
duplex proof fine-tunes into its scoring ASR.

WER is word-level (``--normalizer basic``): Whisper's English normalizer rewrites "six zero four" as "604",
which turns a digit string into one "word" and the WER into an utterance error rate; that rate is printed too.
Slow (about 7 minutes on 2 idle CPU cores). ``SLMZOO_DIGITS_BUDGET_S`` changes the training time budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DIGITS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "digits"


@pytest.mark.slow
@pytest.mark.skipif(not (DIGITS / "train.jsonl").is_file(), reason=f"digits corpus not found at {DIGITS}")
def test_salm_tiny_learns_digits(tmp_path, digits_asr):
    run, train_seconds = digits_asr["run"], digits_asr["train_seconds"]
    cli = [sys.executable, "-m", "slmzoo"]
    hyps = tmp_path / "hyps.jsonl"
    result = subprocess.run([*cli, "eval", str(run), "--data", str(DIGITS / "test.jsonl"), "--json",
                             "--normalizer", "basic", "--out", str(hyps)], check=True, capture_output=True, text=True)
    metrics = json.loads(result.stdout)
    rows = [json.loads(line) for line in hyps.read_text().splitlines()]
    utterance_errors = sum(r["hyp"].strip() != r["ref"].strip() for r in rows) / len(rows)
    print(f"digits: trained in {train_seconds:.0f} s, test WER {metrics['wer']:.3f}, CER {metrics['cer']:.3f}, "
          f"utterances with an error {utterance_errors:.3f}")
    assert metrics["num_utterances"] == 200
    assert metrics["wer"] <= 0.10
    assert train_seconds <= float(os.environ.get("SLMZOO_DIGITS_BUDGET_S", 600))


# The families CI proves with the architecture benchmark's own recipe (benchmarks/bench_architectures.py: the salm
# tiny preset's train section, everything trained, LoRA off, lr 1e-3) and the test WER each must stay under: the
# issue's 15%, or for a family measured short of it (README table, its note) a bound its previous state failed.
CI_BOUNDS = {
    "bestow": 0.15,  # 8.0% measured (benchmark and this training); 22.8% before the FastConformer subsampling fix
    "salmonn": 0.35,  # 22.9% measured; 78.8% with the Llama at initializer_range 0.02, 89.3% with std-0.02 Whisper stem
}
PARALLEL = 2  # trainings at once, one thread each: on 2 cores two 1-thread runs beat two 2-thread runs in a row


def train_args(card: str, run: Path, *extra: str) -> list[str]:
    """``slmzoo train`` arguments: ``card``'s tiny preset on the digits training split into ``run``."""
    return [card, "--preset", "tiny", "--train", str(DIGITS / "train.jsonl"), "--out", str(run), "--no-progress",
            *extra]


def train_in_parallel(commands: dict[str, list[str]]) -> None:
    """Runs every ``slmzoo train`` command line, ``PARALLEL`` at a time with one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pending, running = list(commands), []
    try:
        while pending or running:
            while pending and len(running) < PARALLEL:
                name = pending.pop(0)
                running.append((name, subprocess.Popen([sys.executable, "-m", "slmzoo", "train", *commands[name]],
                                                       env=env)))
            name, process = running[0]
            assert process.wait() == 0, f"{name}: training failed"
            running.pop(0)
    finally:  # a failed training stops the others (no orphans left training after the test session)
        for _, process in running:
            process.kill()


@pytest.fixture(scope="module")
def family_runs(tmp_path_factory) -> dict[str, Path]:
    """Every family of ``CI_BOUNDS`` trained (no validation passes: they only cost time)."""
    from benchmarks.bench_architectures import family_overrides, recipe

    out = tmp_path_factory.mktemp("families")
    runs = {family: out / family for family in CI_BOUNDS}
    train_in_parallel({family: train_args(family, run, *recipe(None, 1e-3), *family_overrides(family, out))
                       for family, run in runs.items()})
    return runs


@pytest.mark.slow
@pytest.mark.skipif(not (DIGITS / "train.jsonl").is_file(), reason=f"digits corpus not found at {DIGITS}")
@pytest.mark.parametrize("family", list(CI_BOUNDS))
def test_family_learns_digits(family, family_runs):
    """About 8-9 minutes per family on one CPU core; two families train at once."""
    result = subprocess.run([sys.executable, "-m", "slmzoo", "eval", str(family_runs[family]), "--data",
                             str(DIGITS / "test.jsonl"), "--json", "--normalizer", "basic"],
                            check=True, capture_output=True, text=True)
    metrics = json.loads(result.stdout)
    print(f"{family} digits: test WER {metrics['wer']:.3f}, CER {metrics['cer']:.3f}")
    assert metrics["num_utterances"] == 200
    assert metrics["wer"] <= CI_BOUNDS[family]


# Families whose digits run is short of a bound worth testing (README table, their notes): CI proves at least that
# the audio reaches their LLM, since a masking, gate or gradient bug would leave them at the text prior.
# Steps per family: mu-llama's one pooled vector per clip needs more of them (at 150 steps its own-audio loss varied
# 0.053-0.075 between machines and thread counts, the shuffled one 0.45-0.72).
MEMORISERS = {"audio-flamingo": 150, "mu-llama": 250}


@pytest.mark.slow
@pytest.mark.skipif(not (DIGITS / "train.jsonl").is_file(), reason=f"digits corpus not found at {DIGITS}")
@pytest.mark.parametrize("family", list(MEMORISERS))
def test_family_memorises_digit_clips_through_their_audio(family):
    """The tiny preset, everything trained, fits 16 digit utterances (one batch, 150-250 steps): its loss ends far
    below what the same model gives with the clips shuffled among the transcripts, so the answer comes from the
    audio (a model that ignores it cannot tell the 16 transcripts apart). One to three minutes on 2 CPU cores."""
    import torch

    import slmzoo

    torch.manual_seed(0)
    rows = [json.loads(line) for line in (DIGITS / "train.jsonl").read_text().splitlines()[:16]]
    model = slmzoo.build(slmzoo.load_card(family, preset="tiny"))
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    clips, texts = [str(DIGITS / r["audio_filepath"]) for r in rows], [r["text"] for r in rows]
    batch = model.processor(clips, responses=texts)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(MEMORISERS[family]):
        loss = model(batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    shuffled = model.processor(clips[1:] + clips[:1], responses=texts)
    with torch.no_grad():
        own, other = model(batch).loss.item(), model(shuffled).loss.item()
    print(f"{family}: loss {own:.4f} with each clip's own audio, {other:.4f} with the clips shuffled")
    # measured here (pytest, 2 threads): audio-flamingo 0.006 and 0.85; mu-llama 0.055 and 0.63. A model that ignores
    # the audio gives the same loss both ways; 5x leaves room for the machine-to-machine spread seen above.
    assert own < 0.1 and other > 5 * own


# The fusions that keep the audio out of the sequence and attend to it as memory, each swapped into the tiny pipeline
# that learns fastest (ultravox's: Whisper, a Llama) with that pipeline's or the fusion's own card's adapter: each must
# generalise to the dev split, which memorising clips does not show. Dev loss after 600 steps of the recipe, measured
# here (1 thread): gated_xattn 0.150 and 0.201 (seeds 0, 1), cross_attention 0.151; the text prior is about 0.5, and
# gated_xattn with Flamingo's zero gates stays there from scratch (0.54: the README benchmark's audio-flamingo note).
MEMORY_FUSIONS = {
    "gated_xattn": ["--set", "fusion={type: gated_xattn, num_heads: 4, zero_init: outputs}",
                    "--set", "adapter={type: audio_transformer, num_layers: 2, num_heads: 4, ff_dim: 256}"],
    "cross_attention": ["--set", "fusion={type: cross_attention, num_heads: 4, num_layers: 2, self_attention: true}"],
}
MEMORY_FUSION_STEPS, MEMORY_FUSION_DEV_LOSS = 600, 0.30


@pytest.fixture(scope="module")
def memory_fusion_runs(tmp_path_factory) -> dict[str, Path]:
    from benchmarks.bench_architectures import recipe

    out = tmp_path_factory.mktemp("memory-fusions")
    runs = {fusion: out / fusion for fusion in MEMORY_FUSIONS}
    train_in_parallel({fusion: train_args("ultravox", run, "--val", str(DIGITS / "dev.jsonl"),
                                          *recipe(MEMORY_FUSION_STEPS, 1e-3),
                                          "--set", f"train.eval_every={MEMORY_FUSION_STEPS}", *MEMORY_FUSIONS[fusion])
                       for fusion, run in runs.items()})
    return runs


@pytest.mark.slow
@pytest.mark.skipif(not (DIGITS / "train.jsonl").is_file(), reason=f"digits corpus not found at {DIGITS}")
@pytest.mark.parametrize("fusion", list(MEMORY_FUSIONS))
def test_memory_fusion_learns_digits(fusion, memory_fusion_runs):
    """About a minute per fusion on one CPU core; two train at once."""
    from slmzoo.training.metrics import read_metrics

    dev = [row["val_loss"] for row in read_metrics(memory_fusion_runs[fusion]) if "val_loss" in row]
    print(f"{fusion} in ultravox's tiny pipeline: dev loss {dev}")
    assert dev and dev[-1] <= MEMORY_FUSION_DEV_LOSS
