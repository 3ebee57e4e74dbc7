"""Proof that a duplex card learns: ``duplex-s2s -p tiny`` from scratch on the spoken-dialogue corpus
(``../shared/data/duplex``), on CPU, within 10 minutes of training; then on the test split its text answers and, read
by an ASR model, its spoken answers are scored (the README's worked example, step by step).

Measured: of the 135 test answers, with ``duplex.user_ctc_weight=4`` (this test's) 52%, 53% and 44% right as text
after 1500 steps over seeds 0-2, 42% as speech at seed 2 (47% text at weight 2, 52% at weight 2 after 1800 steps;
codec ceiling 91-98%; chance, the answer prior alone: 5%). Weight 4 is chosen for the user channel: its CTC
transcripts of the user are 90% exact at 1500 steps, against 24% at weight 2. The issue's bar (80% text, 60% speech)
is not reached yet, so the bounds below are the recipe's own level (a regression that loses the content falls to
chance), not that bar.

The recipe (README, "Models that speak"): a ``spectral_kmeans`` codec fitted on the agent's speech
(``slmzoo codec fit``), a word-level tokenizer of the corpus (``slmzoo duplex words``: the byte tokenizer cannot
write "eight" within its 5 frames) and the user's transcript as an auxiliary CTC target of the user channel
(``duplex.user_ctc_weight``: the stand-in for NeMo's ASR-pretrained encoder). The scoring ASR model is the SALM digits
recipe trained on the digits corpus plus the agent's training turns (``slmzoo duplex turns``): the digits corpus has
no one-word utterance, and every answer here is one to three words in the agent's voice. CI fine-tunes the
session's digits run (``digits_asr``, conftest: the digits proof's) on both for ``ASR_FINETUNE_STEPS`` rather than
train a second one from scratch. Slow: about 9 minutes on 2 idle CPU cores, plus the shared digits run.
``SLMZOO_DUPLEX_BUDGET_S`` changes the training time budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DUPLEX, DIGITS = SHARED / "duplex", SHARED / "digits"
CLI = [sys.executable, "-m", "slmzoo"]

# The proof's recipe (README): 1500 steps of ~30 s batches, lr 2e-3, measured at ~0.22 s a step on 2 idle cores
# (~330 s; room for a CI machine 1.45x slower than usual within the 600 s budget).
DUPLEX_STEPS = 1500
ASR_FINETUNE_STEPS = 300


def slmzoo(*args: str) -> str:
    return subprocess.run([*CLI, *map(str, args)], check=True, capture_output=True, text=True).stdout


@pytest.mark.slow
@pytest.mark.skipif(not (DUPLEX / "train_cuts.jsonl").is_file() or not (DIGITS / "train.jsonl").is_file(),
                    reason=f"duplex or digits corpus not found under {SHARED}")
def test_duplex_tiny_learns_the_spoken_dialogues(tmp_path, digits_asr):
    train = DUPLEX / "train_cuts.jsonl"
    codec, words, run = tmp_path / "codec.npy", tmp_path / "words", tmp_path / "duplex"
    slmzoo("codec", "fit", "duplex-s2s", "-p", "tiny", "--set", "codec={type: spectral_kmeans}", "--data", train,
           "--max-utterances", 300, "--out", codec)
    slmzoo("duplex", "words", train, "--out", words)
    start = time.perf_counter()
    slmzoo("train", "duplex-s2s", "-p", "tiny", "--set", f"codec={{type: spectral_kmeans, codebook: {codec}}}",
           "--set", f"llm.tokenizer={words}", "--set", "duplex.user_ctc_weight=4.0", "--set", "train.lr=2e-3",
           "--set", "train.warmup_steps=100", "--set", f"train.max_steps={DUPLEX_STEPS}", "--train", train,
           "--out", run, "--no-progress")
    train_seconds = time.perf_counter() - start

    turns, asr = tmp_path / "agent_turns.jsonl", tmp_path / "asr"
    slmzoo("duplex", "turns", train, "--out", turns)
    slmzoo("train", "salm", "-p", "tiny", "--init", digits_asr["run"], "--train", DIGITS / "train.jsonl", "--train",
           turns, "--set", f"train.max_steps={ASR_FINETUNE_STEPS}", "--set", "train.warmup_steps=30", "--set",
           "train.eval_every=null", "--out", asr, "--no-progress")
    metrics = json.loads(slmzoo("eval", run, "--data", DUPLEX / "test_cuts.jsonl", "--asr", asr, "--json"))
    print(f"duplex: trained {DUPLEX_STEPS} steps in {train_seconds:.0f} s; of {metrics['num_answers']} test answers "
          f"{metrics['answer_accuracy']:.1%} right as text, {metrics['asr_answer_accuracy']:.1%} as speech (codec "
          f"ceiling {metrics['codec_answer_accuracy']:.1%}); text BLEU {metrics['text_bleu']:.1f}, ASR-BLEU "
          f"{metrics['asr_bleu']:.1f} (ceiling {metrics['codec_asr_bleu']:.1f})")
    assert metrics["num_conversations"] == 100 and metrics["num_answers"] == 135
    assert metrics["answer_accuracy"] >= 0.25
    assert metrics["asr_answer_accuracy"] >= 0.20  # its speech says what its text says, mostly
    assert metrics["codec_answer_accuracy"] >= 0.80  # the codec and the scoring ASR read the agent's answers
    assert train_seconds <= float(os.environ.get("SLMZOO_DUPLEX_BUDGET_S", 600))
