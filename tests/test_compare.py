"""``slmzoo compare``: runs side by side, from what each run recorded (card, metrics, kept evaluations)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from slmzoo.cli.main import app
from slmzoo.training.loop import RunOptions, train
from tests.fakes import tiny_model_card, write_corpus

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    corpus = write_corpus(root / "corpus", n=12)
    test = write_corpus(root / "corpus", n=4, seed=1, name="test.jsonl")
    folders = []
    for name, sets in (("small", ["train.max_steps=2"]), ("longer", ["train.max_steps=4", "train.lr=3e-3"])):
        card = tiny_model_card("train.max_duration=3", "train.log_every=1", "train.checkpoint_every=2",
                               "train.augment={}", *sets)
        train(card, RunOptions(train=[str(corpus)], out=root / name, progress=False))
        folders.append(root / name)
    return folders, test


def test_eval_of_a_run_is_kept_with_it(runs):
    (small, _), test = runs
    result = runner.invoke(app, ["eval", str(small), "--data", str(test), "--json", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    kept = json.loads((small / "eval" / "test.json").read_text())
    assert kept["wer"] == json.loads(result.stdout)["wer"] and kept["data"] == str(test)
    partial = runner.invoke(app, ["eval", str(small), "--data", str(test), "--limit", "1", "--json"])
    assert partial.exit_code == 0 and json.loads((small / "eval" / "test.json").read_text()) == kept  # not a whole eval


def test_compare_table_json_markdown_and_chart(runs, tmp_path):
    (small, longer), test = runs
    assert runner.invoke(app, ["eval", str(longer), "--data", str(test), "--max-new-tokens", "4"]).exit_code == 0
    data = json.loads(runner.invoke(app, ["compare", str(small), str(longer), "--json"]).stdout)
    assert [r["name"] for r in data] == ["small", "longer"] and [r["steps"] for r in data] == [2, 4]
    for row in data:
        assert row["card"] == "salm" and row["preset"] == "tiny" and row["params"] >= row["trainable"] > 0
        assert 0 < row["padding_efficiency"] <= 1 and row["train_audio_per_second"] > 0
        assert "test" in row["evals"] and 0 <= row["evals"]["test"]["wer"]
        assert row["audio_tokens_per_second"] == pytest.approx(100.0)  # fake 10 ms frames, linear adapter
    markdown = runner.invoke(app, ["compare", str(small), str(longer), "--markdown"]).stdout.splitlines()
    assert markdown[0].startswith("| Run | Card | Params | Trained | Audio tokens/s | Train audio s/s |")
    assert markdown[0].endswith("| test WER / CER |") and markdown[2].startswith("| small | salm (tiny) |")
    chart = tmp_path / "chart.png"
    table = runner.invoke(app, ["compare", str(small), str(longer), "--out", str(chart)])
    assert table.exit_code == 0 and "longer" in table.output
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_names_a_folder_that_is_no_run(tmp_path):
    result = runner.invoke(app, ["compare", str(tmp_path)])
    assert result.exit_code == 2 and "not a training run" in result.output
