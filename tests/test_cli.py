"""The ``slmzoo`` command line: list, show, diff, schema, build, generate, and the import-time promise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import slmzoo
import slmzoo.plugins
from slmzoo.card.diff import MISSING, Change, diff_cards, flatten, group
from slmzoo.card.json_schema import card_json_schema
from slmzoo.card.loader import load_card
from slmzoo.cli.common import human
from slmzoo.cli.main import app
from tests.conftest import BASE_CARD, register_test_component

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


OTHER_CARD = """
name: zoo_other
year: 2024
paper: https://example.org/other
encoder:
  type: whisper
  pretrained: openai/whisper-large-v3-turbo
  config: {d_model: 1280, encoder_layers: 32, encoder_attention_heads: 20, encoder_ffn_dim: 5120, num_mel_bins: 128,
           decoder_layers: 4, decoder_attention_heads: 20, decoder_ffn_dim: 5120}
adapter: {type: stack, k: 8, hidden_dim: 8192, activation: swiglu, norm: rmsnorm}
llm:
  type: hf_causal
  pretrained: meta-llama/Llama-3.1-8B-Instruct
  config: {model_type: llama, hidden_size: 4096, num_hidden_layers: 32, num_attention_heads: 32, num_key_value_heads: 8,
           intermediate_size: 14336, vocab_size: 128256, rope_theta: 500000.0, max_position_embeddings: 131072,
           tie_word_embeddings: false}
  dtype: bfloat16
prompt:
  audio_tag: <|audio|>
  chat_template: llama3
  user_format: "{instruction}\\n\\n{audio}"
  tasks: {asr: Transcribe the audio., qa: Listen to the audio and answer the question.}
train: {freeze: [encoder, llm], lr: 2.0e-3}
presets:
  tiny:
    encoder:
      pretrained: null
      config: {d_model: 64, encoder_layers: 2, encoder_attention_heads: 4, encoder_ffn_dim: 128, num_mel_bins: 80,
               decoder_layers: 1, decoder_attention_heads: 4, decoder_ffn_dim: 128, max_source_positions: 1500}
    adapter: {k: 4, hidden_dim: 128}
    llm:
      pretrained: null
      tokenizer: bytes
      dtype: float32
      config: {model_type: llama, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
               intermediate_size: 128, max_position_embeddings: 2048, tie_word_embeddings: false}
    prompt: {chat_template: chatml}
    train: {precision: fp32}
"""


@pytest.fixture
def cards(tmp_path) -> tuple[str, str]:
    """Two fixed cards as files, also registered as card names zoo_base and zoo_other for in-process tests."""
    folder = tmp_path / "zoo_cards"
    folder.mkdir()
    (folder / "zoo_base.yaml").write_text(BASE_CARD, encoding="utf-8")
    (folder / "zoo_other.yaml").write_text(OTHER_CARD, encoding="utf-8")

    class Cards:
        @staticmethod
        @slmzoo.hookimpl
        def slmzoo_register_cards(register):
            register(folder)

    slmzoo.plugins.register_plugin(Cards, "test_cards")
    return str(folder / "zoo_base.yaml"), str(folder / "zoo_other.yaml")


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch):
    for var in ("SLMZOO_LOAD_PLUGINS", "SLMZOO_DISABLE_PLUGINS", "SLMZOO_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    slmzoo.plugins.reset()
    yield
    slmzoo.plugins.reset()


def slmzoo_cli(*args: str, env: dict | None = None, python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    for var in ("SLMZOO_LOAD_PLUGINS", "SLMZOO_DISABLE_PLUGINS", "SLMZOO_DEBUG"):
        if var not in (env or {}):
            full_env.pop(var, None)
    return subprocess.run([sys.executable, *python_flags, "-m", "slmzoo", *args], capture_output=True, text=True,
                          cwd=REPO, env=full_env, timeout=300)


def invoke(*args: str):
    return runner.invoke(app, list(args))


# -- the import-time promise ------------------------------------------------------------------------
LIGHT_COMMANDS = [
    ["--help"],
    ["list"],
    ["list", "cards", "--json"],
    ["show", "salm", "--preset", "tiny"],
    ["diff", "salm", "ultravox"],
    ["schema"],
    ["plugins", "list"],
    ["build", "--help"],
    ["serve", "--help"],
]


# Runs the CLI like ``python -m slmzoo`` and then reports sys.modules: importtime does not see modules
# imported through importlib (entry points), sys.modules sees everything.
PROBE = """
import runpy, sys
sys.argv = ["slmzoo", *sys.argv[1:]]
try:
    runpy.run_module("slmzoo", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize("args", LIGHT_COMMANDS, ids=" ".join)
def test_light_commands_never_import_torch(args):
    proc = slmzoo_cli(*args, python_flags=("-X", "importtime"))
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert imported, "no -X importtime output"
    assert "slmzoo.cli.main" in imported
    heavy = [name for name in imported if name.split(".")[0] in ("torch", "transformers")]
    assert not heavy, f"{' '.join(args)} imported {heavy[:5]}"

    probe = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=REPO,
                           timeout=300)
    assert "HEAVY=\n" in probe.stderr, probe.stderr[-2000:]


def test_python_dash_m_is_the_same_cli():
    proc = slmzoo_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"slmzoo {slmzoo.__version__}"
    assert slmzoo_cli().returncode in (0, 2)  # no command: help


# -- list --------------------------------------------------------------------------------------------
def test_list_shows_cards_and_components(cards):
    result = invoke("list")
    assert result.exit_code == 0, result.output
    for text in ("salm", "ultravox", "zoo_base", "whisper", "stack", "concat", "hf_causal", "Qwen/Qwen3-1.7B",
                 "https://example.org/base"):
        assert text in result.output


def test_list_filters_by_kind(cards):
    result = invoke("list", "encoders")
    assert result.exit_code == 0
    assert "whisper" in result.output and "hf_causal" not in result.output and "zoo_base" not in result.output
    result = invoke("list", "cards")
    assert "zoo_other" in result.output and "hf_causal" not in result.output
    result = invoke("list", "cards", "--filter", "zoo_*", "--json")
    assert [c["name"] for c in json.loads(result.stdout)["cards"]] == ["zoo_base", "zoo_other"]
    result = invoke("list", "encodrs")
    assert result.exit_code == 2 and "did you mean encoders?" in result.output


def test_list_json(cards):
    result = invoke("list", "--json")
    data = json.loads(result.stdout)
    base = next(c for c in data["cards"] if c["name"] == "zoo_base")
    assert base["encoder"] == "whisper" and base["adapter"] == "stack" and base["fusion"] == "concat"
    assert base["llm"] == "Qwen/Qwen3-1.7B" and base["year"] == 2023 and base["path"] == cards[0]
    assert "stack" in [c["name"] for c in data["components"]["adapter"]]
    assert data["components"]["encoder"][0]["plugin"] == "encoders"
    assert data["broken_plugins"] == []


def test_list_cards_markdown(cards):
    result = invoke("list", "cards", "--markdown")
    assert result.exit_code == 0
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "| Card | Year | Encoder | Adapter | Fusion | LLM | Size | Paper |"
    assert "| zoo_base | 2023 | whisper | stack | concat | Qwen/Qwen3-1.7B |  | [link](https://example.org/base) |" in lines
    assert any(line.startswith("| salm |") for line in lines)
    # a published total shows without torch; --sizes counts parameters with a meta build
    assert any(line.startswith("| qwen2-audio |") and "8.2B (published)" in line for line in lines)
    sized = invoke("list", "cards", "--markdown", "--sizes", "--filter", "ultravox")
    assert sized.exit_code == 0
    assert "| ultravox | 2024 | whisper | stack | concat | meta-llama/Llama-3.1-8B-Instruct | 8.72B |" in sized.stdout


def test_list_shows_an_in_process_plugin():
    register_test_component("cli_test_adapter", aliases=("cta",), plugin="cli_test_plugin", size=(int, 1))
    result = invoke("list", "adapters")
    assert "cli_test_adapter (cta)" in result.output and "cli_test_plugin" in result.output


# -- show --------------------------------------------------------------------------------------------
def test_show_round_trip(tmp_path, cards):
    result = invoke("show", "zoo_base", "--preset", "tiny", "--set", "adapter.k=3", "--set", "train.lr=0.01")
    assert result.exit_code == 0, result.output
    shown = tmp_path / "shown.yaml"
    shown.write_text(result.stdout, encoding="utf-8")
    original = load_card(cards[0], preset="tiny", overrides=["adapter.k=3", "train.lr=0.01"]).data
    assert load_card(shown).data == original
    assert yaml.safe_load(result.stdout) == original
    again = invoke("show", str(shown))
    assert again.stdout == result.stdout
    assert original["adapter"]["k"] == 3 and original["train"]["lr"] == 0.01


@pytest.mark.parametrize("name", ["salm", "ultravox"])
def test_show_round_trip_first_party(tmp_path, name):
    shown = tmp_path / "card.yaml"
    shown.write_text(invoke("show", name, "--preset", "tiny").stdout, encoding="utf-8")
    assert load_card(shown).data == load_card(name, preset="tiny").data


def test_show_fills_defaults_and_drops_presets(cards):
    data = yaml.safe_load(invoke("show", cards[1]).stdout)
    assert "presets" not in data and "extends" not in data
    assert data["train"]["grad_accum"] == 1  # a default the card does not state
    assert data["fusion"] == {"type": "concat"}


def test_show_json(cards):
    result = invoke("show", cards[0], "--json")
    assert json.loads(result.stdout)["llm"]["pretrained"] == "Qwen/Qwen3-1.7B"


def test_show_by_path_and_extends(tmp_path, cards):
    child = tmp_path / "child.yaml"
    child.write_text("name: child\nextends: zoo_cards/zoo_base.yaml\nadapter: {k: 16}\n", encoding="utf-8")
    data = yaml.safe_load(invoke("show", str(child)).stdout)
    assert data["name"] == "child" and data["adapter"]["k"] == 16 and data["adapter"]["hidden_dim"] == 2048


# -- diff --------------------------------------------------------------------------------------------
def test_diff_cards_logic():
    a = {"name": "a", "encoder": {"type": "whisper", "layer": "last"}, "adapter": {"type": "stack", "k": 4},
         "llm": {"type": "hf_causal", "lora": {"r": 8}, "config": {"x": [1, 2]}}, "train": {"lr": 1.0}}
    b = {"name": "b", "encoder": {"type": "whisper", "layer": -2}, "adapter": {"type": "qformer", "queries": 8},
         "llm": {"type": "hf_causal", "lora": None, "config": {"x": [1, 3], "y": 1}}, "train": {"lr": 1}}
    changes = diff_cards(a, b)
    by_path = {c.path: c for c in changes}
    assert [c.section for c in changes] == ["encoder", "adapter", "llm", "llm", "llm", "other"]
    assert by_path["encoder.layer"] == Change("encoder.layer", "changed", "last", -2)
    assert by_path["adapter"].kind == "replaced" and by_path["adapter"].right == {"type": "qformer", "queries": 8}
    assert by_path["llm.lora"].left == {"r": 8} and by_path["llm.lora"].right is None
    assert by_path["llm.config.x"].right == [1, 3]
    assert by_path["llm.config.y"].kind == "added" and by_path["llm.config.y"].left is MISSING
    assert "train.lr" not in by_path  # 1 and 1.0 are the same learning rate
    assert diff_cards(a, a) == []
    assert list(group(changes)) == ["encoder", "adapter", "llm", "other"]
    assert flatten({"a": {"b": 1, "c": {}}, "d": [1]}) == {"a.b": 1, "a.c": {}, "d": [1]}
    assert json.dumps([c.to_json() for c in changes])


def test_diff_exit_codes(cards):
    base, other = cards
    assert slmzoo_cli("diff", base, base).returncode == 0
    different = slmzoo_cli("diff", base, other)
    assert different.returncode == 1
    assert "adapter.k" in different.stdout and "llm.pretrained" in different.stdout
    assert slmzoo_cli("diff", "salm", "ultravox").returncode == 1
    error = slmzoo_cli("diff", "salm", "ultravoxx")
    assert error.returncode == 2 and "did you mean ultravox?" in error.stderr and "Traceback" not in error.stderr


def test_diff_json_and_overrides(cards):
    result = invoke("diff", "zoo_base", "zoo_other", "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["same"] is False
    changes = {c["path"]: c for c in data["changes"]}
    assert changes["adapter.k"] == {"path": "adapter.k", "section": "adapter", "kind": "changed", "left": 4, "right": 8}
    assert changes["prompt.tasks.qa"]["kind"] == "added" and "left" not in changes["prompt.tasks.qa"]

    same = invoke("diff", "zoo_base", cards[0], "--preset", "tiny", "--json")
    assert same.exit_code == 0 and json.loads(same.stdout) == {**json.loads(same.stdout), "same": True, "changes": []}


def test_diff_a_child_card_and_a_replaced_block(tmp_path, cards):
    child = tmp_path / "child.yaml"
    child.write_text("name: zoo_base\nextends: zoo_base\nllm: {lora: null}\nencoder: {layer: 12}\n",
                     encoding="utf-8")
    result = invoke("diff", "zoo_base", str(child), "--json")
    assert result.exit_code == 1
    changes = json.loads(result.stdout)["changes"]
    assert [c["path"] for c in changes] == ["encoder.layer", "llm.lora"]
    assert changes[1]["left"]["r"] == 128 and changes[1]["right"] is None
    table = invoke("diff", "zoo_base", str(child))
    assert "encoder.layer" in table.output and "12" in table.output

    register_test_component("zoo_linear", scale=(float, 1.0))
    replaced = invoke("diff", "zoo_base", "zoo_base", "--set", "adapter.type=zoo_linear", "--json")
    assert replaced.exit_code == 0  # --set applies to both sides
    swapped = tmp_path / "swapped.yaml"
    swapped.write_text("name: zoo_base\nextends: zoo_base\nadapter: {type: zoo_linear}\n", encoding="utf-8")
    result = invoke("diff", "zoo_base", str(swapped), "--json")
    [change] = json.loads(result.stdout)["changes"]
    assert change["path"] == "adapter" and change["kind"] == "replaced"
    assert change["left"]["type"] == "stack" and change["right"] == {"type": "zoo_linear", "scale": 1.0}
    assert "adapter (replaced: type stack -> zoo_linear)" in invoke("diff", "zoo_base", str(swapped)).output


def test_diff_bad_set_is_an_error():  # exit 2, not 1: an error is not a difference
    result = invoke("diff", "salm", "ultravox", "--set", "nonsense")
    assert result.exit_code == 2 and "expected KEY.PATH=VALUE" in result.output


# -- schema ------------------------------------------------------------------------------------------
def test_schema_is_json_with_registered_components():
    result = invoke("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    defs = schema["$defs"]
    for ref in ("encoder:whisper", "adapter:stack", "fusion:concat", "llm:hf_causal"):
        assert ref in defs
    whisper = defs["encoder:whisper"]
    assert whisper["properties"]["type"]["const"] == "whisper"
    assert "pad_to_window" in whisper["properties"] and whisper["additionalProperties"] is False
    assert schema["properties"]["encoder"]["discriminator"]["mapping"]["whisper"] == "#/$defs/encoder:whisper"
    assert {"$ref": "#/$defs/adapter:stack"} in schema["properties"]["adapter"]["then"]["oneOf"]
    # nested option models are kept, under the component's own prefix
    lora = defs["llm:hf_causal"]["properties"]["lora"]
    assert {"$ref": "#/$defs/llm.hf_causal.LoraOptions"} in lora["anyOf"]
    assert defs["llm.hf_causal.LoraOptions"]["additionalProperties"] is False


def _reject_unknown_options(schema: dict, section: str, block: dict) -> bool:
    """A tiny manual check: does the schema's branch for ``block['type']`` forbid a key of ``block``?"""
    union = schema["properties"][section]
    ref = union["discriminator"]["mapping"][block["type"]]
    branch = schema["$defs"][ref.rsplit("/", 1)[-1]]
    return branch["additionalProperties"] is False and any(k not in branch["properties"] for k in block)


def test_schema_rejects_an_unknown_option_and_includes_plugins():
    register_test_component("schema_pool", window=(int, 4))
    schema = json.loads(invoke("schema").stdout)
    assert "adapter:schema_pool" in schema["$defs"]
    assert "schema_pool" in schema["properties"]["adapter"]["properties"]["type"]["enum"]
    assert _reject_unknown_options(schema, "encoder", {"type": "whisper", "pad_to_windw": True})
    assert not _reject_unknown_options(schema, "encoder", {"type": "whisper", "pad_to_window": True})
    assert _reject_unknown_options(schema, "adapter", {"type": "schema_pool", "k": 2})


def test_schema_validates_the_cards():
    jsonschema = pytest.importorskip("jsonschema")
    schema = card_json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    for file in sorted((REPO / "cards").glob("*.yaml")):
        card = yaml.safe_load(file.read_text())
        assert [e.message for e in validator.iter_errors(card)] == [], file.name
        resolved = load_card(file, preset="tiny").data
        assert [e.message for e in validator.iter_errors(resolved)] == [], file.name
    bad = yaml.safe_load(BASE_CARD)
    assert list(validator.iter_errors(bad)) == []
    bad["encoder"]["pad_to_windw"] = True
    assert list(validator.iter_errors(bad))
    bad = yaml.safe_load(BASE_CARD)
    bad["adapter"]["type"] = "stak"
    assert list(validator.iter_errors(bad))
    child = {"name": "c", "extends": "salm", "adapter": {"k": 2}}  # extends: partial blocks are fine
    assert list(validator.iter_errors(child)) == []


def test_schema_to_a_file(tmp_path):
    result = invoke("schema", "--output", str(tmp_path / "card.schema.json"))
    assert result.exit_code == 0
    assert json.loads((tmp_path / "card.schema.json").read_text())["title"] == "slmzoo card"


# -- numbers -------------------------------------------------------------------------------------------
def test_human_numbers():
    assert human(12_345_678) == "12.3M"
    assert human(1_720_000_000) == "1.72B"
    assert human(999) == "999"
    assert human(1_000) == "1K"
    assert human(345_678) == "346K"


# -- build and generate (need the model code; they run wherever it is in place) --------------------------
@pytest.fixture
def wav(tmp_path):
    import soundfile as sf
    from conftest import speechlike

    path = tmp_path / "a.wav"
    sf.write(path, speechlike(1.0), 16000)
    return path


def test_build_tiny_prints_a_summary(cards):
    result = invoke("build", "zoo_base", "--preset", "tiny")
    assert result.exit_code == 0, result.output
    for text in ("encoder", "adapter", "fusion", "llm", "total", "whisper", "stack", "hf_causal",
                 "audio tokens per second"):
        assert text in result.output
    data = json.loads(invoke("build", "zoo_base", "--preset", "tiny", "--json").stdout)
    assert [r["component"] for r in data["components"]] == ["encoder", "adapter", "fusion", "llm"]
    assert data["params"] > 0 and 0 < data["trainable"] <= data["params"]


def test_build_meta_counts_the_full_model(cards):
    data = json.loads(invoke("build", "zoo_base", "--meta", "--json").stdout)
    assert data["meta"] is True
    assert data["params"] > 1_000_000_000  # Qwen3-1.7B alone; on the meta device, no memory used
    rows = {r["component"]: r for r in data["components"]}
    assert rows["encoder"]["frames_per_second"] == 50
    assert data["audio_tokens_per_second"] == pytest.approx(12.5)
    result = invoke("build", "zoo_base", "--meta")
    assert result.exit_code == 0 and "B " in result.output


def test_build_meta_with_out_is_refused(tmp_path):
    result = invoke("build", "salm", "--meta", "--out", str(tmp_path / "m"))
    assert result.exit_code == 2 and "--meta" in result.output


def test_build_out_then_generate_and_show(tmp_path, wav, cards):
    out = tmp_path / "model"
    result = invoke("build", "zoo_base", "--preset", "tiny", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "card.yaml").is_file() and (out / "model.safetensors").is_file()
    shown = yaml.safe_load(invoke("show", str(out)).stdout)
    assert shown == load_card("zoo_base", preset="tiny").data
    generated = invoke("generate", str(out), "--audio", str(wav), "--audio", str(wav), "--max-new-tokens", "3",
                       "--prompt", "Transcribe the audio.")
    assert generated.exit_code == 0, generated.output
    assert len(generated.stdout.splitlines()) == 2
    refused = invoke("generate", str(out), "--audio", str(wav), "--preset", "tiny")
    assert refused.exit_code == 2 and "saved model" in refused.output


def test_generate_from_a_card(wav, cards):
    result = invoke("generate", "zoo_base", "--preset", "tiny", "--audio", str(wav), "--max-new-tokens", "2", "--json")
    assert result.exit_code == 0, result.output
    [item] = json.loads(result.stdout)
    assert item["audio"] == str(wav) and isinstance(item["text"], str)


def test_diff_arch(cards):
    result = invoke("diff", "zoo_base", "zoo_other", "--arch", "--json")
    assert result.exit_code == 1, result.output
    arch = json.loads(result.stdout)["arch"]
    assert arch["left"]["audio_tokens_per_second"] == pytest.approx(12.5)
    assert arch["right"]["audio_tokens_per_second"] == pytest.approx(6.25)
    assert arch["right"]["params"] > arch["left"]["params"]
    table = invoke("diff", "zoo_base", "zoo_other", "--arch")
    assert "architecture (meta build)" in table.output


def test_generate_errors_are_for_people(tmp_path):
    proc = slmzoo_cli("generate", "salm", "--preset", "tiny", "--audio", str(tmp_path / "missing.flac"))
    assert proc.returncode == 2 and "no such audio file" in proc.stderr and "Traceback" not in proc.stderr
    proc = slmzoo_cli("generate", str(tmp_path), "--audio", str(tmp_path / "missing.flac"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_generate_unreadable_audio(tmp_path, cards):
    bad = tmp_path / "bad.flac"
    bad.write_text("not audio", encoding="utf-8")
    result = invoke("generate", "zoo_base", "--preset", "tiny", "--audio", str(bad), "--max-new-tokens", "2")
    assert result.exit_code == 2, result.output
    assert "bad.flac" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("content", ["nan", "inf", "-inf", "empty"])
def test_generate_names_a_file_of_nan_infinite_or_no_samples(tmp_path, cards, content):
    import soundfile as sf

    path = tmp_path / f"{content}.wav"
    samples = np.zeros(0 if content == "empty" else 16000, np.float32)
    if content != "empty":
        samples[:] = float(content)
    sf.write(path, samples, 16000, subtype="FLOAT")  # float WAV keeps NaN and infinities as written
    result = invoke("generate", "zoo_base", "--preset", "tiny", "--audio", str(path), "--max-new-tokens", "2")
    assert result.exit_code == 2, result.output
    assert f"{content}.wav" in result.output and "Traceback" not in result.output
    reason = "empty" if content == "empty" else "NaN or infinite samples"
    assert reason in result.output


def test_cards_of_each_architecture_are_listed_in_their_own_table():
    """The duplex cards have codec and speech-head sections and no fusion: a table of their own."""
    from slmzoo import catalog

    text = catalog.cards_markdown([r for r in catalog.card_rows() if r["name"] in ("salm", "duplex-s2s")])
    first, second = text.split("\n\n", 1)
    assert first.splitlines()[0] == "| Card | Year | Encoder | Adapter | Fusion | LLM | Size | Paper |"
    assert "| salm |" in first and "duplex" not in first
    assert second.startswith("Architecture `duplex_s2s`:")
    assert "| Card | Year | Encoder | Adapter | LLM | Codec | Speech head | Size | Paper |" in second
    result = invoke("list", "cards")
    assert result.exit_code == 0 and "cards: duplex_s2s" in result.output
