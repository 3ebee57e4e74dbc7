"""``slmzoo plugins list | install | uninstall``.

A plugin is an entry point in the ``slmzoo`` group of an installed distribution. ``install`` and
``uninstall`` run pip with this interpreter (``sys.executable -m pip``), then rediscover entry points
and report what appeared or disappeared.
"""

from __future__ import annotations

import importlib
import re
import site
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from slmzoo.cli.common import CLIError, JsonOpt, echo_json, err, handle_errors, out
from slmzoo.cli.common import escape as _escape

plugins_app = typer.Typer(help="Installed plugins: list, install, uninstall.", no_args_is_help=True,
                          context_settings={"help_option_names": ["-h", "--help"]})

SELF = "slmzoo"


def normalize(name: str) -> str:
    """PEP 503 name normalisation: ``My_Plugin.x`` -> ``my-plugin-x``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def plugin_rows() -> list[dict[str, Any]]:
    from slmzoo.plugins import host

    return [{"name": p.name, "module": p.module, "distribution": p.distribution, "version": p.version,
             "status": p.status, "components": list(p.components), "cards": list(p.cards),
             "commands": list(p.commands), "error": p.error,
             "traceback": p.traceback}
            for p in sorted(host().plugins.values(), key=lambda p: p.name)]


def _registered(row: dict[str, Any]) -> str:
    parts = list(row["components"]) + [f"command:{name}" for name in row.get("commands", [])]
    if row["cards"]:
        from slmzoo.card.loader import CARD_SUFFIXES

        n = 0
        for path in row["cards"]:
            p = Path(path)
            n += len([f for s in CARD_SUFFIXES for f in p.glob(f"*{s}")]) if p.is_dir() else 1
        parts.append(f"{n} card{'s' if n != 1 else ''}")
    return ", ".join(parts) or "-"


@plugins_app.command("list")
@handle_errors()
def list_plugins(
    json_: JsonOpt = False,
    traceback: Annotated[bool, typer.Option("--traceback", "-v", help="Show broken plugins' tracebacks.")] = False,
) -> None:
    """Plugins found through the `slmzoo` entry-point group: status and what each registered."""
    rows = plugin_rows()
    if json_:
        for row in rows:
            if not traceback:
                row.pop("traceback")
        echo_json(rows)
        return
    from rich.table import Table

    table = Table(title="plugins", title_justify="left", title_style="bold")
    for column in ("plugin", "distribution", "status", "registered"):
        table.add_column(column, overflow="fold")
    style = {"ok": "green", "broken": "bold red", "disabled": "yellow"}
    for row in rows:
        dist = f"{row['distribution']} {row['version']}" if row["distribution"] else "(in-process)"
        registered = row["error"] if row["status"] == "broken" else _registered(row)
        table.add_row(row["name"], dist, f"[{style[row['status']]}]{row['status']}[/]",
                      _escape(registered or "-"))
    console = out()
    console.print(table)
    if traceback:
        for row in rows:
            if row["traceback"]:
                console.print(f"\n[bold]{row['name']}[/]")
                console.print(row["traceback"], markup=False, highlight=False)


# -- install / uninstall ------------------------------------------------------------------------------
def _pip(args: list[str]) -> int:
    command = [sys.executable, "-m", "pip", *args]
    err().print("$ " + " ".join(command), markup=False, style="dim")
    return subprocess.call(command)


def _site_dirs() -> list[str]:
    dirs = list(getattr(site, "getsitepackages", lambda: [])())
    user = getattr(site, "getusersitepackages", lambda: None)()
    if user:
        dirs.append(user)
    dirs += [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    return list(dict.fromkeys(d for d in dirs if Path(d).is_dir()))


def _pth_files() -> set[Path]:
    return {p for d in _site_dirs() for p in Path(d).glob("*.pth")}


def _activate_new_paths(before: set[Path]) -> None:
    """Process ``.pth`` files pip just wrote (editable installs) so their modules import in this process."""
    known = set(sys.path)
    for pth in sorted(_pth_files() - before):
        try:
            site.addpackage(str(pth.parent), pth.name, known)  # what site does at start-up
        except Exception:  # noqa: BLE001 - a new process will still see it
            pass


def _reload() -> dict[str, Any]:
    from slmzoo import plugins

    importlib.invalidate_caches()
    plugins.reset()
    return {row["name"]: row for row in plugin_rows()}


def _describe(rows: list[dict[str, Any]], verb: str) -> None:
    console = out()
    for row in rows:
        dist = f"{row['distribution']} {row['version']}" if row["distribution"] else "?"
        if row["status"] == "broken":
            console.print(f"[bold red]{verb} plugin {row['name']} ({dist}) is broken:[/] ", end="")
            console.print(row["error"], markup=False, soft_wrap=True)
        else:
            console.print(f"{verb} plugin [bold]{row['name']}[/] ({_escape(dist)}): {_escape(_registered(row))}")


@plugins_app.command("install")
@handle_errors()
def install(
    target: Annotated[str, typer.Argument(metavar="NAME_OR_PATH",
                                          help="A package name, a local folder, or a git URL (git+https://...).")],
    editable: Annotated[bool, typer.Option("--editable", "-e", help="Editable install of a local folder.")] = False,
    upgrade: Annotated[bool, typer.Option("--upgrade", "-U", help="Upgrade if already installed.")] = False,
    no_build_isolation: Annotated[bool, typer.Option(
        "--no-build-isolation", help="Build with the installed setuptools (offline installs).")] = False,
    no_deps: Annotated[bool, typer.Option("--no-deps", help="Do not install the plugin's dependencies.")] = False,
) -> None:
    """Install a plugin with pip and show what it registered."""
    before = {row["name"]: row for row in plugin_rows()}
    pth_before = _pth_files()
    args = ["install"]
    if upgrade:
        args.append("--upgrade")
    if no_build_isolation:
        args.append("--no-build-isolation")
    if no_deps:
        args.append("--no-deps")
    args += ["-e", target] if editable else [target]
    code = _pip(args)
    if code != 0:
        raise CLIError(f"pip install {target} failed (exit status {code})", code=code if code in (1, 2) else 1)
    _activate_new_paths(pth_before)
    after = _reload()
    new = [row for name, row in after.items() if name not in before]
    changed = [row for name, row in after.items()
               if name in before and (row["version"], row["status"]) != (before[name]["version"], before[name]["status"])]
    if not new and not changed:
        err().print(f"[yellow]pip installed {_escape(target)}, but it adds no slmzoo plugin[/] "
                    "(a plugin declares [project.entry-points.slmzoo] in its pyproject.toml)")
        return
    _describe(new, "new")
    _describe(changed, "updated")
    if any(row["status"] == "broken" for row in new + changed):
        raise typer.Exit(1)


def _distribution_for(name: str) -> str:
    """The distribution behind a plugin name, or ``name`` itself if it is a distribution with slmzoo plugins."""
    from importlib import metadata

    from slmzoo.plugins import ENTRY_POINT_GROUP, host

    info = host().plugins.get(name)
    if info is not None:
        if not info.distribution:
            raise CLIError(f"plugin {name!r} was registered in-process, not installed by a distribution")
        return info.distribution
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        from slmzoo.card.errors import did_you_mean

        known = sorted(set(host().plugins) | {p.distribution for p in host().plugins.values() if p.distribution})
        hint = did_you_mean(name, known) or f"installed plugins: {', '.join(known) or 'none'}"
        raise CLIError(f"no installed plugin or distribution named {name!r} ({hint})") from None
    if not [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]:
        raise CLIError(f"{dist.metadata['Name']} is installed but provides no slmzoo plugin; use pip to remove it")
    return dist.metadata["Name"]


@plugins_app.command("uninstall")
@handle_errors()
def uninstall(
    name: Annotated[str, typer.Argument(help="A plugin (entry-point) name or its distribution's name.")],
) -> None:
    """Uninstall the distribution that provides a plugin."""
    dist = _distribution_for(name)
    if normalize(dist) == SELF:
        raise CLIError(
            f"{name!r} is part of slmzoo itself and cannot be uninstalled on its own; "
            f"disable it with SLMZOO_DISABLE_PLUGINS={name if name != dist else 'NAME'}, "
            "or remove slmzoo with pip uninstall slmzoo")
    before = {row["name"]: row for row in plugin_rows()}
    code = _pip(["uninstall", "-y", dist])
    if code != 0:
        raise CLIError(f"pip uninstall {dist} failed (exit status {code})", code=1)
    after = _reload()
    removed = [name for name in before if name not in after]
    console = out()
    console.print(f"uninstalled {_escape(dist)}" + (f": removed plugin{'s' if len(removed) > 1 else ''} "
                                                    f"{', '.join(removed)}" if removed else ""))
