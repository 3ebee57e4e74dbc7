"""Card errors as people meet them: every error path prints file:line:col, the key, a fix, exits 2, and
never a traceback. Messages are checked in-process (CliRunner, fast); exit codes and the absence of a
traceback through a real ``python -m slmzoo`` process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import slmzoo.plugins
from slmzoo.card.errors import CardError
from slmzoo.card.loader import load_card
from slmzoo.cli.main import app
from tests.conftest import BASE_CARD, register_test_component

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch):
    monkeypatch.delenv("SLMZOO_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("SLMZOO_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("SLMZOO_DEBUG", raising=False)
    slmzoo.plugins.reset()
    yield
    slmzoo.plugins.reset()


@pytest.fixture
def base(tmp_path) -> Path:
    """A fixed card (whisper + stack + concat + hf_causal) the error cases extend as ``base.yaml``."""
    path = tmp_path / "base.yaml"
    path.write_text(BASE_CARD, encoding="utf-8")
    return path


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def slmzoo_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ}
    for var in ("SLMZOO_LOAD_PLUGINS", "SLMZOO_DISABLE_PLUGINS", "SLMZOO_DEBUG"):
        env.pop(var, None)
    return subprocess.run([sys.executable, "-m", "slmzoo", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


# Each case: card text (None: base.yaml itself; no newline: a card name), extra CLI args, and substrings the error must contain.
CASES = {
    "unknown_key": (
        """
        name: t
        extends: base.yaml
        encodr:
          type: whisper
        """, [], [":3:1", "encodr: unknown key", "did you mean encoder?"]),
    "unknown_option": (
        """
        name: t
        extends: base.yaml
        encoder:
          pad_to_windw: true
        """, [], [":4:3", "encoder.pad_to_windw: unknown option", "did you mean pad_to_window?"]),
    "unknown_component_type": (
        """
        name: t
        extends: base.yaml
        adapter:
          type: stak
        """, [], [":4:9", "adapter.type: unknown adapter 'stak'", "did you mean stack?"]),
    "wrong_value_type": (
        """
        name: t
        extends: base.yaml
        adapter:
          k: four
        """, [], [":4:6", "adapter.k:", "valid integer"]),
    "tab": (
        "name: t\nextends: base.yaml\nadapter:\n\tk: 4\n", [], [":4:1", "tab character", "spaces"]),
    "duplicate_key": (
        """
        name: t
        extends: base.yaml
        year: 2020
        year: 2021
        """, [], [":4:1", "year: duplicate key (first at line 3)"]),
    "off_key": (
        """
        name: t
        extends: base.yaml
        prompt:
          tasks:
            off: Say nothing.
        """, [], [":5:5", "prompt.tasks.off", "boolean false", "quote it: 'off'"]),
    "unquoted_no": (
        """
        name: t
        extends: base.yaml
        prompt:
          system: no
        """, [], [":4:11", "prompt.system:", "valid string", "YAML reads unquoted no as false; quote it: 'no'"]),
    "unknown_preset": (None, ["--preset", "tinny"], ["presets.tinny: no such preset", "did you mean tiny?"]),
    "unknown_card_name": ("salmm", [], ["salmm: no such card file or card name", "did you mean salm?"]),
    "bad_set_syntax": (None, ["--set", "llm.lora.r"], ["--set llm.lora.r", "expected KEY.PATH=VALUE"]),
    "bad_set_key": (None, ["--set", "adapter.kk=2"], ["--set adapter.kk=2", "adapter.kk: unknown option",
                                                      "did you mean k?"]),
    "bad_set_type": (None, ["--set", "encoder.type=wisper"], ["unknown encoder 'wisper'", "did you mean whisper?"]),
}


def _card_arg(tmp_path: Path, case: str) -> str:
    text, _, _ = CASES[case]
    if text is None:
        return str(tmp_path / "base.yaml")
    if "\n" not in text:
        return text  # a card name
    return str(write(tmp_path, f"{case}.yaml", text))


@pytest.mark.parametrize("case", CASES)
def test_error_message(tmp_path, base, case):
    card = _card_arg(tmp_path, case)
    _, args, expected = CASES[case]
    result = runner.invoke(app, ["show", card, *args])
    assert result.exit_code == 2, result.output
    for text in expected:
        assert text in result.output, f"{text!r} not in {result.output!r}"
    if CASES[case][0] is not None and card.endswith(".yaml"):
        assert f"{Path(card).name}:" in result.output  # file:line:col
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case", ["unknown_key", "tab", "unknown_preset", "unknown_card_name", "bad_set_syntax",
                                  "unquoted_no"])
def test_error_exit_code_in_a_real_process(tmp_path, base, case):
    card = _card_arg(tmp_path, case)
    _, args, expected = CASES[case]
    proc = slmzoo_cli("show", card, *args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stdout == ""
    assert expected[-1] in proc.stderr


def test_every_problem_is_reported_at_once(tmp_path, base):
    card = write(tmp_path, "many.yaml", """
        name: t
        extends: base.yaml
        encoder:
          pad_to_windw: true
        adapter:
          k: four
        train:
          lrr: 0.1
        """)
    with pytest.raises(CardError) as info:
        load_card(card)
    paths = {issue.path for issue in info.value.issues}
    assert {"encoder.pad_to_windw", "adapter.k", "train.lrr"} <= paths
    for issue in info.value.issues:
        assert issue.location.line is not None and issue.location.column is not None
    result = runner.invoke(app, ["show", str(card)])
    assert result.exit_code == 2
    assert result.output.count("error:") == len(info.value.issues)
    assert "did you mean lr?" in result.output


def test_extends_cycle(tmp_path):
    write(tmp_path, "a.yaml", "name: a\nextends: b.yaml\n")
    write(tmp_path, "b.yaml", "name: b\nextends: a.yaml\n")
    result = runner.invoke(app, ["show", str(tmp_path / "a.yaml")])
    assert result.exit_code == 2
    assert "extends cycle: a.yaml -> b.yaml -> a.yaml" in result.output
    proc = slmzoo_cli("show", str(tmp_path / "a.yaml"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_extends_unknown_parent(tmp_path):
    card = write(tmp_path, "c.yaml", "name: c\nextends: salmm\n")
    result = runner.invoke(app, ["show", str(card)])
    assert result.exit_code == 2
    assert "c.yaml:2:10 extends: 'salmm': no such card file or card name (did you mean salm?)" in result.output


def test_missing_required_section(tmp_path):
    card = write(tmp_path, "d.yaml", """
        name: d
        encoder: {type: whisper}
        adapter: {type: stack}
        """)
    result = runner.invoke(app, ["show", str(card)])
    assert result.exit_code == 2
    assert "llm: required key is missing" in result.output


def test_not_a_mapping(tmp_path):
    card = write(tmp_path, "e.yaml", "- just\n- a list\n")
    result = runner.invoke(app, ["show", str(card)])
    assert result.exit_code == 2
    assert "a card is a YAML mapping" in result.output


def test_stale_options_of_a_replaced_type_do_not_leak_through_parent_presets(tmp_path, base):
    """A child that changes adapter.type must not inherit the parent's tiny preset for the old adapter."""
    register_test_component("pool_test", window=(int, 4))
    card = write(tmp_path, "child.yaml", """
        name: child
        extends: base.yaml
        adapter: {type: pool_test, window: 8}
        presets:
          tiny: {adapter: {window: 2}}
        """)
    assert load_card(card, preset="tiny").data["adapter"] == {"type": "pool_test", "window": 2}
    assert load_card(card).data["adapter"] == {"type": "pool_test", "window": 8}
    # a --set that changes the type replaces the block too
    data = load_card(base, overrides=["adapter.type=pool_test"]).data
    assert data["adapter"] == {"type": "pool_test", "window": 4}


def test_debug_env_shows_the_traceback(tmp_path):
    env = {**os.environ, "SLMZOO_DEBUG": "1"}
    proc = subprocess.run([sys.executable, "-m", "slmzoo", "show", "salmm"], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "CardError" in proc.stderr
