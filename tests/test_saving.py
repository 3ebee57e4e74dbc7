"""The saved-model format (slmzoo.saving): one owner for the layout, a manifest of sizes and sha256, damaged files
named at load, ``--resume`` falling back to the newest intact checkpoint, sharded weights, and a DDP run killed
with SIGKILL that resumes."""

from __future__ import annotations

import json

import pytest
import torch

import slmzoo
from slmzoo import saving
from slmzoo.training import checkpoints as ckpt
from slmzoo.training.loop import RunOptions, train
from slmzoo.training.metrics import read_metrics
from tests.fakes import tiny_model_card, write_corpus


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "model"
    model = slmzoo.build(slmzoo.load_card("salm", preset="tiny"))
    model.save_pretrained(folder)
    return folder


def damage(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # flip one byte in the middle: same size, another sha256
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


def test_layout_and_manifest(saved):
    info = json.loads((saved / saving.INFO_FILE).read_text())
    assert info["format"] == saving.FORMAT and info["architecture"] == "speechlm"
    assert set(info["files"]) == {saving.CARD_FILE, saving.WEIGHTS_FILE}  # byte tokenizer: no tokenizer files
    assert info["files"][saving.WEIGHTS_FILE]["size"] == (saved / saving.WEIGHTS_FILE).stat().st_size
    assert saving.is_saved_model(saved) and not saving.is_saved_model(saved.parent)
    saving.verify(saved)


@pytest.mark.parametrize("how", ["truncate", "flip"])
@pytest.mark.parametrize("name", [saving.WEIGHTS_FILE, saving.CARD_FILE])
def test_a_damaged_file_is_named_at_load(saved, tmp_path, how, name):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    damage(copy / name, how)
    with pytest.raises(saving.CheckpointError) as error:
        slmzoo.from_pretrained(copy)
    assert name in str(error.value)
    assert ("bytes where" in str(error.value)) if how == "truncate" else ("sha256" in str(error.value))


def test_sharded_weights_load_like_one_file(tmp_path):
    model = slmzoo.build(slmzoo.load_card("salm", preset="tiny"))
    saving.save_pretrained(model, tmp_path / "sharded", max_shard_bytes=300_000)
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*-of-*.safetensors"))
    index = json.loads((tmp_path / "sharded" / saving.WEIGHTS_INDEX_FILE).read_text())
    assert len(shards) > 2 and sorted(set(index["weight_map"].values())) == shards
    assert not (tmp_path / "sharded" / saving.WEIGHTS_FILE).exists()
    again = slmzoo.from_pretrained(tmp_path / "sharded")
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def _tiny_run(corpus, run, resume=False):
    card = tiny_model_card("train.max_duration=3", "train.log_every=1", "train.checkpoint_every=2",
                           "train.keep_last=3", "train.max_steps=4")
    return train(card, RunOptions(train=[str(corpus)], out=run, progress=False, resume=resume))


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog, how):
    corpus = write_corpus(tmp_path / "corpus", n=12)
    run = tmp_path / "run"
    _tiny_run(corpus, run)
    losses = [r["loss"] for r in read_metrics(run)]
    newest = ckpt.checkpoint_dir(run) / "step-000004"
    damage(newest / ("optimizer.pt" if how == "truncate" else saving.WEIGHTS_FILE), how)
    assert ckpt.latest_checkpoint(run, intact=False) == newest
    assert ckpt.latest_checkpoint(run).name == "step-000002"  # the damaged one is skipped, with a warning
    assert "skipping damaged checkpoint step-000004" in caplog.text
    summary = _tiny_run(corpus, run, resume=True)
    assert summary["step"] == 4 and saving.is_intact(newest)  # steps 3-4 trained again, step 4 written anew
    assert [r["loss"] for r in read_metrics(run)] == losses  # exactly as the first time
