"""Architectures are registered: a test plugin adds a component kind (``gain``) and an architecture that uses it,
and a card of it goes through everything a speechlm card does (show, diff, schema, list, build, save and load,
training) without a line of kernel code knowing it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import slmzoo
import slmzoo.plugins
import tests.toy_architecture as toy
from slmzoo.cli.main import app
from slmzoo.training.loop import RunOptions, train
from slmzoo.training.metrics import read_metrics
from tests.fakes import write_corpus

runner = CliRunner()
CARD = """
name: gained
extends: salm
architecture: gained_speechlm
description: salm with a learned gain on its audio embeddings.
gain: {type: scalar_gain, init: 0.5}
"""


@pytest.fixture(autouse=True)
def toy_plugin():
    slmzoo.plugins.register_plugin(toy, "toy_architecture")
    yield
    slmzoo.plugins.host().unregister("toy_architecture")


@pytest.fixture
def card_file(tmp_path):
    path = tmp_path / "gained.yaml"
    path.write_text(CARD, encoding="utf-8")
    return path


def test_list_shows_the_architecture_and_the_kind():
    data = json.loads(runner.invoke(app, ["list", "architectures", "--json"]).stdout)
    archs = {a["name"]: a for a in data["architectures"]}
    assert [s["name"] for s in archs["gained_speechlm"]["sections"]] == ["encoder", "adapter", "gain", "fusion", "llm"]
    assert archs["speechlm"]["plugin"] == "slmzoo" and archs["gained_speechlm"]["plugin"] == "toy_architecture"
    kinds = {k["name"]: k for k in json.loads(runner.invoke(app, ["list", "kinds", "--json"]).stdout)["kinds"]}
    assert kinds["gain"]["components"] == 1 and kinds["encoder"]["base"] == "slmzoo.components:Encoder"
    gains = runner.invoke(app, ["list", "gains"])
    assert gains.exit_code == 0 and "scalar_gain" in gains.output
    assert "gained_speechlm" in runner.invoke(app, ["list"]).output


def test_show_diff_and_schema(card_file, tmp_path):
    shown = runner.invoke(app, ["show", str(card_file), "--preset", "tiny"])
    assert shown.exit_code == 0, shown.output
    import yaml

    data = yaml.safe_load(shown.output)
    assert data["architecture"] == "gained_speechlm" and data["gain"] == {"type": "scalar_gain", "init": 0.5}
    assert list(data)[5:12] == ["architecture", "encoder", "adapter", "gain", "fusion", "llm", "gain_limit"]
    assert data["gain_limit"] is None  # the architecture's own card key, with its default
    other = tmp_path / "other.yaml"
    other.write_text(CARD.replace("init: 0.5", "init: 2.0"), encoding="utf-8")
    diff = json.loads(runner.invoke(app, ["diff", str(card_file), str(other), "--json"]).stdout)
    assert [(c["path"], c["section"]) for c in diff["changes"]] == [("gain.init", "gain")]
    against_salm = json.loads(runner.invoke(app, ["diff", "salm", str(card_file), "--json"]).stdout)
    paths = [c["path"] for c in against_salm["changes"]]
    assert "gain.type" in paths and "architecture" in paths

    import jsonschema

    schema = json.loads(runner.invoke(app, ["schema"]).stdout)
    jsonschema.validate(data, schema)  # the toy architecture's card is valid
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "gain": {"type": "scalar_gain", "init": "loud"}}, schema)
    with pytest.raises(jsonschema.ValidationError):  # a gain section in a speechlm card is an unknown key
        jsonschema.validate({**data, "architecture": "speechlm"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "gain_limit": -1}, schema)


def test_card_errors_name_the_architecture_and_its_sections(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CARD.replace("gained_speechlm", "gained_speechml").replace("scalar_gain", "scalar_gian"))
    result = runner.invoke(app, ["show", str(bad)])
    assert result.exit_code == 2
    assert "architecture: unknown architecture 'gained_speechml' (did you mean gained_speechlm?)" in result.output
    missing = tmp_path / "missing.yaml"
    missing.write_text(CARD.replace("gain: {type: scalar_gain, init: 0.5}\n", ""))
    result = runner.invoke(app, ["show", str(missing)])
    assert result.exit_code == 2 and "gain: required key is missing" in result.output
    limit = tmp_path / "limit.yaml"
    limit.write_text(CARD + "gain_limt: 3\n")
    result = runner.invoke(app, ["show", str(limit)])
    assert "gain_limt: unknown key (did you mean gain_limit?)" in result.output
    typo = tmp_path / "typo.yaml"
    typo.write_text(CARD.replace("scalar_gain", "scalar_gian"))
    result = runner.invoke(app, ["show", str(typo)])
    assert "gain.type: unknown gain 'scalar_gian' (did you mean scalar_gain?)" in result.output


def test_build_save_load_and_policy(card_file, tmp_path):
    card = slmzoo.load_card(str(card_file), preset="tiny", overrides=["train.freeze=[gain]", "gain_limit=0.001"])
    model = slmzoo.build(card)
    assert isinstance(model, toy.GainedSpeechLM) and model.sections == ("encoder", "adapter", "gain", "fusion", "llm")
    assert [r["component"] for r in model.summary()] == ["encoder", "adapter", "gain", "fusion", "llm"]
    assert not model.gain.scale.requires_grad  # train.freeze names the new section
    wave = np.sin(np.arange(8000) / 10).astype(np.float32)
    with torch.no_grad():
        embeds, _ = model.encode_audio(*[t for t in model.prepare_batch([wave]).values()][:2])
    assert embeds[0].abs().max() <= 0.001  # the architecture reads its own card key
    before = model.generate([wave], max_new_tokens=4)
    model.save_pretrained(tmp_path / "saved")
    again = slmzoo.from_pretrained(tmp_path / "saved")
    assert type(again) is toy.GainedSpeechLM and float(again.gain.scale) == 0.5
    assert again.generate([wave], max_new_tokens=4) == before
    assert json.loads((tmp_path / "saved" / "slmzoo.json").read_text())["architecture"] == "gained_speechlm"


def test_trains_with_its_own_learning_rate_group(card_file, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n=12)
    card = slmzoo.load_card(str(card_file), preset="tiny",
                            overrides=["train.max_steps=3", "train.max_duration=3", "train.log_every=1",
                                       "train.lr_groups={gain: 0.05}", "train.checkpoint_every=3",
                                       "train.augment={}"])
    summary = train(card, RunOptions(train=[str(corpus)], out=tmp_path / "run", progress=False))
    assert summary["step"] == 3 and [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3]
    trained = slmzoo.from_pretrained(summary["checkpoint"])
    assert float(trained.gain.scale.detach()) != 0.5  # the new kind's parameters train, in their own group
    from slmzoo.card.errors import CardError

    with pytest.raises(CardError, match="train.lr_groups.gian: unknown learning-rate group .did you mean gain"):
        slmzoo.load_card(str(card_file), preset="tiny", overrides=["train.lr_groups={gian: 0.05}"])


def test_the_new_kind_passes_the_contract_kit(tmp_path):
    from slmzoo.testing import CHECKS, check_component

    for check in CHECKS:
        check_component("gain", "scalar_gain", check, tmp_path / check)
