"""Scoring (WER/CER after normalization, BLEU) and ``slmzoo eval`` on saved models and run folders."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from slmzoo.evaluation import score
from slmzoo.training import checkpoints as ckpt
from tests.fakes import tiny_model_card, write_corpus


def test_wer_cer_after_whisper_normalization():
    records = [{"ref": "Hello, World!", "hyp": "hello world"}, {"ref": "it's five", "hyp": "it is 5"}]
    assert score(records)["wer"] == 0.0
    assert score(records, normalize="none")["wer"] > 0
    out = score([{"ref": "one two three four", "hyp": "one two tree four"}], normalize="basic")
    assert out["wer"] == pytest.approx(0.25) and out["cer"] == pytest.approx(1 / 18)
    assert out["num_utterances"] == 1 and "bleu" not in out


def test_bleu_for_translation_tasks():
    out = score([{"ref": "the cat sat on the mat", "hyp": "the cat sat on the mat", "task": "ast"}])
    assert out["bleu"] == pytest.approx(100.0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A run folder with one complete checkpoint (and a partial one that must be ignored)."""
    from slmzoo.builder import build

    root = tmp_path_factory.mktemp("eval")
    model = build(tiny_model_card())
    run = root / "run"
    folder = ckpt.checkpoint_dir(run) / "step-000005"
    folder.mkdir(parents=True)
    ckpt.save_model(model, folder)
    (folder / ckpt.STATE_FILE).write_text(json.dumps({"step": 5}))
    (ckpt.checkpoint_dir(run) / ".tmp-step-000010").mkdir()
    return run, folder, write_corpus(root / "data", n=5)


def _app():
    from slmzoo.cli.train_cmds import register

    app = typer.Typer()
    register(app)
    return app


@pytest.mark.parametrize("which", ["run", "checkpoint"])
def test_eval_cli_json_and_hypotheses(saved, tmp_path, which):
    run, folder, data = saved
    target = run if which == "run" else folder
    hyps = tmp_path / "hyps.jsonl"
    result = CliRunner().invoke(_app(), ["eval", str(target), "--data", str(data), "--batch-size", "2", "--json",
                                         "--out", str(hyps), "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert {"wer", "cer", "num_utterances", "rtfx"} <= set(metrics) and metrics["num_utterances"] == 5
    assert metrics["rtfx"] > 0
    rows = [json.loads(line) for line in hyps.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"u{i:03d}" for i in range(5)] and all("hyp" in r and "ref" in r for r in rows)


def test_eval_cli_card_with_preset_and_bad_input(saved):
    _, _, data = saved
    tiny_model_card()
    app = _app()
    result = CliRunner().invoke(app, ["eval", "salm", "--preset", "tiny", "--set", "encoder.type=fake_frames",
                                      "--set", "adapter.type=fake_linear", "--data", str(data), "--limit", "2",
                                      "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    assert "WER" in result.stdout and "utterances 2" in result.stdout
    result = CliRunner().invoke(app, ["eval", "salm", "--preset", "tiny", "--data", "nope.jsonl"])
    assert result.exit_code == 2
