"""The hooks a slmzoo plugin may implement.

A plugin is a module named by an entry point in the ``slmzoo`` group. It implements hooks with
``@slmzoo.hookimpl``. Hooks receive a ``register`` callback so that the kernel owns names, duplicates
and aliases; a plugin never mutates kernel state directly.

Nothing here imports torch: registering a component declares its name, kind, description and options
class, and names its implementation as a ``"module:attr"`` string imported only when a model is built.
"""

from __future__ import annotations

import pluggy

PROJECT = "slmzoo"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def slmzoo_register_components(register) -> None:
    """Register what models are made of: call ``register(...)`` once per ``ComponentSpec`` (a component),
    ``ComponentKind`` (a new kind of component, e.g. ``codec``) or ``ArchitectureSpec`` (a way to assemble
    components into a model, e.g. ``speechlm``), all from :mod:`slmzoo.registry`."""


@hookspec
def slmzoo_register_cards(register) -> None:
    """Register model cards: call ``register(path)`` with a card file or a folder of ``*.yaml`` cards."""


@hookspec
def slmzoo_register_importers(register) -> None:
    """Register importers of released checkpoints: call ``register(ImporterSpec(...))`` (:mod:`slmzoo.registry`)
    once per family of releases (Qwen2-Audio, Voxtral, ...), naming the zoo card it maps them onto and its
    implementation, a :class:`slmzoo.importing.Importer`, as a ``"module:Class"`` string."""


@hookspec
def slmzoo_register_commands(register) -> None:
    """Add CLI commands: call ``register(name, command, help=None)`` where ``command`` is a ``typer.Typer`` (a
    group of subcommands, ``slmzoo NAME SUB ...``) or a function (one command, ``slmzoo NAME ...``).

    The module that implements this hook is imported by ``slmzoo --help``: keep torch out of it and import the
    heavy parts inside the command functions."""
