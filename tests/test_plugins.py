"""Plugins: discovery through entry points, broken plugins, misspelled hooks, duplicates, allow and block
lists, and ``slmzoo plugins list | install | uninstall``.

An installed distribution is faked the fast way: a ``NAME-VERSION.dist-info`` folder with ``METADATA`` and
``entry_points.txt`` next to the plugin module, in a temporary folder put on ``sys.path`` (in-process) or
``PYTHONPATH`` (subprocess). ``importlib.metadata`` cannot tell it from a pip install.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import slmzoo
import slmzoo.plugins
from slmzoo.cli import plugins_cmd
from slmzoo.cli.main import app
from slmzoo.registry import ComponentOptions, ComponentSpec, DuplicateComponentError, Registry
from tests.conftest import register_test_component

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
ENV_VARS = ("SLMZOO_LOAD_PLUGINS", "SLMZOO_DISABLE_PLUGINS", "SLMZOO_DEBUG")


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    slmzoo.plugins.reset()
    yield
    slmzoo.plugins.reset()


def fake_distribution(root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str],
                      version: str = "1.0") -> Path:
    """Write ``modules`` (file name -> source) and a dist-info declaring ``entry_points`` into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for filename, source in modules.items():
        (root / filename).write_text(textwrap.dedent(source), encoding="utf-8")
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    lines = "".join(f"{ep} = {module}\n" for ep, module in entry_points.items())
    (info / "entry_points.txt").write_text(f"[slmzoo]\n{lines}", encoding="utf-8")
    return info


GOOD_PLUGIN = '''
from pydantic import Field
from slmzoo import hookimpl
from slmzoo.registry import ComponentOptions, ComponentSpec

class Opts(ComponentOptions):
    window: int = Field(4, ge=1, description="frames per window")

@hookimpl
def slmzoo_register_components(register):
    register(ComponentSpec(kind="adapter", name="{name}", description="a fake adapter", options=Opts,
                           factory="nowhere:Nothing"))
'''

BROKEN_ON_IMPORT = '''
raise RuntimeError("boom: this plugin cannot be imported")
'''

MISSPELLED_HOOK = '''
from slmzoo import hookimpl

@hookimpl
def slmzoo_register_component(register):  # the hook is slmzoo_register_components
    pass
'''


def slmzoo_cli(*args: str, pythonpath: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    if pythonpath is not None:
        full_env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), *filter(None, [os.environ.get("PYTHONPATH")])])
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "slmzoo", *args], capture_output=True, text=True, cwd=REPO,
                          env=full_env, timeout=300)


@pytest.fixture
def bad_plugins(tmp_path):
    """A fake installed distribution with a plugin that raises on import, one with a misspelled hook, and a good one."""
    root = tmp_path / "site"
    fake_distribution(root, "bad-plugins", {"boomplug": "boomplug_mod", "typoplug": "typoplug_mod",
                                            "goodplug": "goodplug_mod"},
                      {"boomplug_mod.py": BROKEN_ON_IMPORT, "typoplug_mod.py": MISSPELLED_HOOK,
                       "goodplug_mod.py": GOOD_PLUGIN.replace("{name}", "good_adapter")})
    return root


# -- discovery and error capture -----------------------------------------------------------------------
def test_first_party_plugins_load_through_entry_points():
    plugins = slmzoo.plugins.host().plugins
    for name in ("encoders", "adapters", "fusion", "llms", "cards"):
        assert plugins[name].status == "ok", plugins[name].error
        assert plugins[name].distribution == "slmzoo"
    assert "adapter:stack" in plugins["adapters"].components


def test_broken_plugins_in_process(bad_plugins, monkeypatch):
    monkeypatch.syspath_prepend(str(bad_plugins))
    slmzoo.plugins.reset()
    host = slmzoo.plugins.host()
    boom, typo, good = host.plugins["boomplug"], host.plugins["typoplug"], host.plugins["goodplug"]
    assert boom.status == "broken" and "RuntimeError: boom" in boom.error and "boomplug_mod.py" in boom.traceback
    assert boom.distribution == "bad-plugins" and boom.version == "1.0"
    assert typo.status == "broken" and "slmzoo_register_component" in typo.error and "misspelled" in typo.error
    assert good.status == "ok" and good.components == ["adapter:good_adapter"]
    assert host.registry.get("adapter", "good_adapter") is not None
    assert host.registry.get("encoder", "whisper") is not None  # everything else still works


def test_broken_plugins_in_the_cli(bad_plugins):
    listed = slmzoo_cli("plugins", "list", "--json", pythonpath=bad_plugins)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["boomplug"]["status"] == "broken" and "boom" in rows["boomplug"]["error"]
    assert rows["typoplug"]["status"] == "broken" and "slmzoo_register_component" in rows["typoplug"]["error"]
    assert rows["goodplug"]["status"] == "ok" and rows["encoders"]["status"] == "ok"

    table = slmzoo_cli("plugins", "list", pythonpath=bad_plugins)
    assert table.returncode == 0
    assert "broken" in table.stdout and "RuntimeError: boom" in table.stdout and "bad-plugins 1.0" in table.stdout

    listing = slmzoo_cli("list", pythonpath=bad_plugins)
    assert listing.returncode == 0 and "Traceback" not in listing.stderr
    assert "whisper" in listing.stdout and "good_adapter" in listing.stdout
    assert "2 broken plugins" in listing.stderr and "boomplug" in listing.stderr

    shown = slmzoo_cli("show", "salm", pythonpath=bad_plugins)
    assert shown.returncode == 0 and "Traceback" not in shown.stderr

    # an unknown command may be one a broken plugin would have added: the error names them and what to do
    missing = slmzoo_cli("nosuchcommand", "--help", pythonpath=bad_plugins)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "No such command 'nosuchcommand'" in missing.stderr and "boomplug" in missing.stderr
    assert "slmzoo plugins list" in missing.stderr and "pip install -e ." in missing.stderr


def test_misspelled_hook_is_caught_by_check_pending():
    class Typo:
        @staticmethod
        @slmzoo.hookimpl
        def slmzoo_register_component(register):
            raise AssertionError("never called")

    info = slmzoo.plugins.register_plugin(Typo, "typo")
    assert info.status == "broken"
    assert "slmzoo_register_component" in info.error and "slmzoo_register_components" in info.error
    assert slmzoo.plugins.host().pm.get_plugin("typo") is None
    # the host is still healthy: a good plugin registered afterwards works
    good = register_test_component("after_typo")
    assert good.status == "ok"


def test_duplicate_component_names_both_providers():
    info = register_test_component("whisper", kind="encoder", plugin="dup_plugin")
    assert info.status == "broken"
    assert "'encoders'" in info.error and "'dup_plugin'" in info.error and "registered twice" in info.error
    spec = slmzoo.plugins.registry().get("encoder", "whisper")
    assert spec.provider == "encoders"  # the first registration stands

    registry = Registry()
    first = ComponentSpec(kind="adapter", name="pool", description="", options=ComponentOptions,
                          factory="a:A", aliases=("avg",), provider="plug_a")
    registry.add(first)
    with pytest.raises(DuplicateComponentError, match=r"by plugin 'plug_a' \(a:A\) and by plugin 'plug_b' \(b:B\)"):
        registry.add(ComponentSpec(kind="adapter", name="avg", description="", options=ComponentOptions,
                                   factory="b:B", provider="plug_b"))
    # the same name under another kind is fine
    registry.add(ComponentSpec(kind="encoder", name="pool", description="", options=ComponentOptions,
                               factory="c:C", provider="plug_c"))


def test_a_hook_that_raises_leaves_nothing_behind():
    class Half:
        @staticmethod
        @slmzoo.hookimpl
        def slmzoo_register_components(register):
            register(ComponentSpec(kind="adapter", name="half_done", description="", options=ComponentOptions,
                                   factory="x:X"))
            raise ValueError("second component is broken")

    info = slmzoo.plugins.register_plugin(Half, "half")
    assert info.status == "broken" and "second component is broken" in info.error
    assert slmzoo.plugins.registry().get("adapter", "half_done") is None
    assert info.components == []


def test_unregister_removes_everything():
    register_test_component("temp_adapter", plugin="temp")
    assert slmzoo.plugins.registry().get("adapter", "temp_adapter") is not None
    slmzoo.plugins.host().unregister("temp")
    assert slmzoo.plugins.registry().get("adapter", "temp_adapter") is None
    assert "temp" not in slmzoo.plugins.host().plugins


# -- allow and block lists -----------------------------------------------------------------------------
def test_load_plugins_allow_list(monkeypatch):
    monkeypatch.setenv("SLMZOO_LOAD_PLUGINS", "encoders, cards")
    slmzoo.plugins.reset()
    plugins = slmzoo.plugins.host().plugins
    assert plugins["encoders"].status == "ok" and plugins["cards"].status == "ok"
    assert plugins["adapters"].status == "disabled" and plugins["llms"].status == "disabled"
    assert slmzoo.plugins.registry().get("adapter", "stack") is None

    rows = {r["name"]: r for r in json.loads(runner.invoke(app, ["plugins", "list", "--json"]).stdout)}
    assert rows["adapters"]["status"] == "disabled"
    result = runner.invoke(app, ["show", "salm"])  # cards still load; their adapters and LLMs are not there
    assert result.exit_code == 2 and "unknown adapter" in result.output and "registered adapters: none" in result.output


def test_disable_plugins_block_list(monkeypatch):
    monkeypatch.setenv("SLMZOO_DISABLE_PLUGINS", "adapters")
    slmzoo.plugins.reset()
    plugins = slmzoo.plugins.host().plugins
    assert plugins["adapters"].status == "disabled" and plugins["encoders"].status == "ok"
    table = runner.invoke(app, ["plugins", "list"])
    assert table.exit_code == 0 and "disabled" in table.output
    assert "stack" not in json.dumps(json.loads(runner.invoke(app, ["list", "adapters", "--json"]).stdout))


def test_disable_list_in_a_real_process(bad_plugins):
    proc = slmzoo_cli("plugins", "list", "--json", pythonpath=bad_plugins,
                      env={"SLMZOO_DISABLE_PLUGINS": "boomplug,typoplug"})
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["boomplug"]["status"] == "disabled" and rows["boomplug"]["error"] is None
    listing = slmzoo_cli("list", pythonpath=bad_plugins, env={"SLMZOO_DISABLE_PLUGINS": "boomplug,typoplug"})
    assert "broken" not in listing.stderr


# -- install and uninstall (pip faked: fast, offline) ------------------------------------------------------
@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
    """Replace pip: 'install X' writes a fake distribution X into a folder on sys.path; 'uninstall' removes it."""
    site = tmp_path / "fake-site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    calls: list[list[str]] = []

    def pip(args: list[str]) -> int:
        calls.append(args)
        name = args[-1]
        if args[0] == "install":
            if name == "fails":
                return 1
            module = f"{name.replace('-', '_')}_plugin"
            fake_distribution(site, name, {name.replace("-", "_"): module},
                              {f"{module}.py": GOOD_PLUGIN.replace("{name}", f"{name.replace('-', '_')}_adapter")})
        elif args[0] == "uninstall":
            for info in site.glob(f"{name.replace('-', '_')}-*.dist-info"):
                shutil.rmtree(info)
        return 0

    monkeypatch.setattr(plugins_cmd, "_pip", pip)
    return calls


def test_install_reports_what_the_new_plugin_registered(fake_pip):
    result = runner.invoke(app, ["plugins", "install", "fakeplug", "--upgrade", "--no-build-isolation"])
    assert result.exit_code == 0, result.output
    assert fake_pip[-1] == ["install", "--upgrade", "--no-build-isolation", "fakeplug"]
    assert "new plugin fakeplug (fakeplug 1.0): adapter:fakeplug_adapter" in result.output
    assert slmzoo.plugins.registry().get("adapter", "fakeplug_adapter") is not None  # reloaded in-process

    listed = runner.invoke(app, ["list", "adapters"])
    assert "fakeplug_adapter" in listed.output

    removed = runner.invoke(app, ["plugins", "uninstall", "fakeplug"])
    assert removed.exit_code == 0, removed.output
    assert fake_pip[-1] == ["uninstall", "-y", "fakeplug"]
    assert "removed plugin fakeplug" in removed.output
    assert slmzoo.plugins.registry().get("adapter", "fakeplug_adapter") is None


def test_uninstall_by_distribution_name_and_editable_install(fake_pip):
    result = runner.invoke(app, ["plugins", "install", "--editable", "my-plug"])
    assert result.exit_code == 0, result.output
    assert fake_pip[-1] == ["install", "-e", "my-plug"]
    assert "new plugin my_plug" in result.output
    removed = runner.invoke(app, ["plugins", "uninstall", "my-plug"])  # the distribution's name
    assert removed.exit_code == 0 and fake_pip[-1] == ["uninstall", "-y", "my-plug"]


def test_install_failure_is_an_error_without_traceback(fake_pip):
    result = runner.invoke(app, ["plugins", "install", "fails"])
    assert result.exit_code == 1
    assert "pip install fails failed" in result.output and "Traceback" not in result.output


def test_uninstall_refuses_slmzoo_itself(fake_pip):
    for name in ("slmzoo", "encoders", "cards"):
        result = runner.invoke(app, ["plugins", "uninstall", name])
        assert result.exit_code == 2, result.output
        assert "part of slmzoo itself" in result.output
    assert fake_pip == []  # pip never ran


def test_uninstall_unknown_names(fake_pip):
    result = runner.invoke(app, ["plugins", "uninstall", "encoderz"])
    assert result.exit_code == 2 and "did you mean encoders?" in result.output
    result = runner.invoke(app, ["plugins", "uninstall", "pytest"])  # installed, but not a slmzoo plugin
    assert result.exit_code == 2 and "provides no slmzoo plugin" in result.output
    assert fake_pip == []


def test_uninstall_refusal_in_a_real_process():
    proc = slmzoo_cli("plugins", "uninstall", "slmzoo")
    assert proc.returncode == 2 and "part of slmzoo itself" in proc.stderr and "Traceback" not in proc.stderr


# -- the example third-party plugin, for real ----------------------------------------------------------------
@pytest.mark.slow
def test_install_build_uninstall_the_example_plugin(tmp_path):
    source = tmp_path / "third_party_plugin"
    shutil.copytree(REPO / "examples" / "third_party_plugin", source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    offline = {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "HF_HUB_OFFLINE": "1"}
    try:
        installed = slmzoo_cli("plugins", "install", str(source), "--no-build-isolation", env=offline)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert "new plugin mean_pool (slmzoo-mean-pool 0.1.0): adapter:mean_pool, 1 card" in installed.stdout

        listed = slmzoo_cli("list")
        assert listed.returncode == 0
        assert "mean_pool" in listed.stdout and "salm_mean_pool" in listed.stdout
        # discovering the plugin imports its spec module, never its torch implementation
        probe = subprocess.run([sys.executable, "-c", (
            "import sys, slmzoo.plugins as p; info = p.host().plugins['mean_pool']; assert info.status == 'ok'; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'slmzoo_mean_pool')))"
        )], capture_output=True, text=True, cwd=REPO, timeout=300)
        assert probe.stdout.strip() == "['slmzoo_mean_pool', 'slmzoo_mean_pool.plugin']", probe.stderr

        built = slmzoo_cli("build", "salm_mean_pool", "--preset", "tiny", "--json", env=offline)
        assert built.returncode == 0, built.stderr
        data = json.loads(built.stdout)
        rows = {r["component"]: r for r in data["components"]}
        assert rows["adapter"]["type"] == "mean_pool" and rows["adapter"]["params"] > 0
        # the tiny preset pools by 2
        assert data["audio_tokens_per_second"] == pytest.approx(rows["encoder"]["frames_per_second"] / 2)

        # the plugin's own tests run slmzoo's contract-test kit on its adapter
        own_tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(source / "tests")],
                                   capture_output=True, text=True, cwd=source, timeout=600,
                                   env={**os.environ, **offline})
        assert own_tests.returncode == 0, own_tests.stdout[-3000:]
        assert "7 passed" in own_tests.stdout

        removed = slmzoo_cli("plugins", "uninstall", "mean_pool", env=offline)
        assert removed.returncode == 0, removed.stderr
        assert "removed plugin mean_pool" in removed.stdout
        assert "mean_pool" not in slmzoo_cli("list", "adapters").stdout
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "slmzoo-mean-pool"], capture_output=True)


# -- commands from plugins ---------------------------------------------------------------------------------------
def test_a_plugin_adds_commands_and_cannot_shadow_slmzoos_own():
    import typer

    tools = typer.Typer(help="Tools of a plugin.")

    @tools.command("shout")
    def shout(word: str):
        """Print WORD loudly."""
        print(word.upper() + "!")

    def greet(name: str = "world"):
        """Say hello."""
        print(f"hello {name}")

    def impostor():
        print("not slmzoo's list")

    class CommandPlugin:
        @staticmethod
        @slmzoo.hookimpl
        def slmzoo_register_commands(register):
            register("greet", greet, help="Say hello.")
            register("tools", tools)
            register("list", impostor)
            register("broken", 42)  # not a command at all

    info = slmzoo.plugins.register_plugin(CommandPlugin, "command_plugin")
    assert info.status == "ok" and info.commands == ["greet", "tools", "list", "broken"]
    help_text = runner.invoke(app, ["--help"])
    assert help_text.exit_code == 0, help_text.output
    assert "greet" in help_text.output and "tools" in help_text.output and "units" in help_text.output
    assert "command 'broken' cannot be used" in help_text.output
    assert runner.invoke(app, ["greet", "--name", "zoo"]).output == "hello zoo\n"
    assert runner.invoke(app, ["tools", "shout", "hi"]).output == "HI!\n"
    listed = runner.invoke(app, ["list", "cards", "--json"])  # slmzoo's own list, not the plugin's
    assert listed.exit_code == 0 and "cards" in json.loads(listed.stdout)
    rows = {r["name"]: r for r in json.loads(runner.invoke(app, ["plugins", "list", "--json"]).stdout)}
    assert rows["command_plugin"]["commands"] == ["greet", "tools", "list", "broken"]
    slmzoo.plugins.host().unregister("command_plugin")
    assert runner.invoke(app, ["greet"]).exit_code != 0  # gone with its plugin


def test_units_comes_from_the_discrete_units_plugin(monkeypatch):
    rows = {r["name"]: r for r in json.loads(runner.invoke(app, ["plugins", "list", "--json"]).stdout)}
    assert rows["adapters"]["commands"] == ["units"]
    monkeypatch.setenv("SLMZOO_DISABLE_PLUGINS", "adapters")
    slmzoo.plugins.reset()
    assert "units" not in runner.invoke(app, ["--help"]).output


def test_the_kernel_names_no_plugin():
    """slmzoo/ never imports slmzoo_plugins: every concrete component comes through the registry."""
    offenders = [str(path.relative_to(REPO)) for path in (REPO / "slmzoo").rglob("*.py")
                 if re.search(r"^\s*(from|import) slmzoo_plugins", path.read_text(), flags=re.M)]
    assert offenders == []


def test_builtin_kinds_and_architecture_ignore_allow_lists(monkeypatch):
    monkeypatch.setenv("SLMZOO_LOAD_PLUGINS", "cards")
    slmzoo.plugins.reset()
    reg = slmzoo.plugins.registry()
    assert {"encoder", "adapter", "fusion", "llm"} <= set(reg.kinds) and reg.get_architecture("speechlm")
    assert slmzoo.plugins.host().plugins["slmzoo"].status == "ok"
