"""Proof that the recipe learns: the salm tiny preset from scratch on the spoken-digits corpus, on CPU, then
``slmzoo eval`` on the test split must reach WER <= 10%.

WER is word-level (``--normalizer basic``): Whisper's English normalizer rewrites "six zero four" as "604",
which turns a digit string into one "word" and the WER into an utterance error rate; that rate is printed too.
Slow (about 7 minutes on 2 idle CPU cores). ``SLMZOO_DIGITS_BUDGET_S`` changes the training time budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

DIGITS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "digits"


@pytest.mark.slow
@pytest.mark.skipif(not (DIGITS / "train.jsonl").is_file(), reason=f"digits corpus not found at {DIGITS}")
def test_salm_tiny_learns_digits(tmp_path):
    run = tmp_path / "run"
    cli = [sys.executable, "-m", "slmzoo"]
    start = time.perf_counter()
    subprocess.run([*cli, "train", "salm", "--preset", "tiny", "--train", str(DIGITS / "train.jsonl"),
                    "--out", str(run), "--no-progress"], check=True)
    train_seconds = time.perf_counter() - start
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
    "bestow": 0.30,  # 22.8% measured at 1400 steps; 38.4% with default-initialised block outputs
}


@pytest.mark.slow
@pytest.mark.skipif(not (DIGITS / "train.jsonl").is_file(), reason=f"digits corpus not found at {DIGITS}")
@pytest.mark.parametrize("family", list(CI_BOUNDS))
def test_family_learns_digits(family, tmp_path):
    """About 7-9 minutes each on 2 idle CPU cores (no validation passes: they only cost time here)."""
    from benchmarks.bench_architectures import family_overrides, recipe

    run = tmp_path / "run"
    cli = [sys.executable, "-m", "slmzoo"]
    subprocess.run([*cli, "train", family, "--preset", "tiny", "--train", str(DIGITS / "train.jsonl"),
                    "--out", str(run), "--no-progress", *recipe(None, 1e-3), *family_overrides(family, tmp_path)],
                   check=True)
    result = subprocess.run([*cli, "eval", str(run), "--data", str(DIGITS / "test.jsonl"), "--json",
                             "--normalizer", "basic"], check=True, capture_output=True, text=True)
    metrics = json.loads(result.stdout)
    print(f"{family} digits: test WER {metrics['wer']:.3f}, CER {metrics['cer']:.3f}")
    assert metrics["num_utterances"] == 200
    assert metrics["wer"] <= CI_BOUNDS[family]
