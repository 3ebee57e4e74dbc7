"""The one plugin manager: entry-point discovery, per-plugin error capture, allow and block lists.

A plugin that fails to import, implements a misspelled hook, or registers a duplicate component is
recorded as broken with its error and unregistered; every other plugin and command keeps working.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pluggy

from slmzoo import hookspecs
from slmzoo.registry import ArchitectureSpec, CommandSpec, ComponentKind, ComponentSpec, ImporterSpec, Registry

ENTRY_POINT_GROUP = "slmzoo"
#: The kernel's own plugin: the component kinds and the ``speechlm`` architecture. Registered first, through the
#: same hooks as every other plugin, and never subject to the allow and block lists (llm's DEFAULT_PLUGINS).
BUILTIN = ("slmzoo", "slmzoo.builtin")
LOAD_ENV = "SLMZOO_LOAD_PLUGINS"  # comma-separated allow-list of plugin names
DISABLE_ENV = "SLMZOO_DISABLE_PLUGINS"  # comma-separated block-list of plugin names


@dataclass
class PluginInfo:
    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    error: str | None = None  # one line; ``traceback`` has the rest
    traceback: str | None = None
    disabled: bool = False
    components: list[str] = field(default_factory=list)  # "kind:name", "kind:NAME" for kinds, "architecture:name"
    cards: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "disabled" if self.disabled else "broken" if self.error else "ok"


class PluginError(Exception):
    pass


def _names_from_env(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


class PluginHost:
    """Owns the pluggy manager and the registry it fills."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.plugins: dict[str, PluginInfo] = {}

    # -- loading ---------------------------------------------------------------------------------
    def load_builtin(self) -> None:
        name, module_name = BUILTIN
        if name not in self.plugins:
            from slmzoo import __version__

            info = PluginInfo(name=name, module=module_name, distribution="slmzoo", version=__version__)
            self.register_module(importlib.import_module(module_name), info)

    def load_entry_points(self) -> None:
        allow, block = _names_from_env(LOAD_ENV), _names_from_env(DISABLE_ENV) or set()
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in self.plugins:
                continue
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=ep.name,
                module=ep.value,
                distribution=dist.name if dist else None,
                version=dist.version if dist else None,
            )
            self.plugins[ep.name] = info
            if (allow is not None and ep.name not in allow) or ep.name in block:
                info.disabled = True
                continue
            try:
                module = ep.load()
            except BaseException as error:  # a plugin must never take the host down, whatever it raises
                if isinstance(error, KeyboardInterrupt):
                    raise
                self._mark_broken(info, error)
                continue
            self.register_module(module, info)

    def register_module(self, module: ModuleType | object, info: PluginInfo) -> PluginInfo:
        """Register a plugin object and run its registration hooks; failures mark it broken."""
        self.plugins[info.name] = info
        try:
            self.pm.register(module, name=info.name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as error:
            self._unregister(info)
            self._mark_broken(info, error, hint="is a hook name misspelled? Hooks: "
                              + ", ".join(h for h in dir(hookspecs) if h.startswith("slmzoo_")))
            return info
        except ValueError as error:  # already registered under another name
            self._mark_broken(info, error)
            return info
        self._call_hooks(info)
        return info

    def _call_hooks(self, info: PluginInfo) -> None:
        plugin = self.pm.get_plugin(info.name)

        def register_component(spec: ComponentSpec | ComponentKind | ArchitectureSpec) -> None:
            if not isinstance(spec, (ComponentSpec, ComponentKind, ArchitectureSpec)):
                raise TypeError(f"register() takes a ComponentSpec, ComponentKind or ArchitectureSpec, "
                                f"not {type(spec).__name__}")
            spec = type(spec)(**{**spec.__dict__, "provider": info.name})
            self.registry.add(spec)
            info.components.append(_label(spec))

        def register_importer(spec: ImporterSpec) -> None:
            if not isinstance(spec, ImporterSpec):
                raise TypeError(f"register() takes an ImporterSpec, not {type(spec).__name__}")
            spec = type(spec)(**{**spec.__dict__, "provider": info.name})
            self.registry.add(spec)
            info.components.append(_label(spec))

        def register_cards(path: str | os.PathLike) -> None:
            path = str(Path(path))
            self.registry.card_paths.append((path, info.name))
            info.cards.append(path)

        def register_command(name: str, command, help: str | None = None) -> None:
            self.registry.add(CommandSpec(name=name, command=command, help=help, provider=info.name))
            info.commands.append(name)

        try:
            for hook_name, callback in (("slmzoo_register_components", register_component),
                                        ("slmzoo_register_cards", register_cards),
                                        ("slmzoo_register_importers", register_importer),
                                        ("slmzoo_register_commands", register_command)):
                hook = getattr(self.pm.hook, hook_name)
                impls = [impl for impl in hook.get_hookimpls() if impl.plugin is plugin]
                for impl in impls:
                    impl.function(callback)
        except BaseException as error:
            if isinstance(error, KeyboardInterrupt):
                raise
            self.registry.remove_provider(info.name)
            info.components.clear()
            info.cards.clear()
            info.commands.clear()
            self._unregister(info)
            self._mark_broken(info, error)

    def _unregister(self, info: PluginInfo) -> None:
        plugin = self.pm.get_plugin(info.name)
        if plugin is not None:
            self.pm.unregister(plugin)

    @staticmethod
    def _mark_broken(info: PluginInfo, error: BaseException, hint: str | None = None) -> None:
        message = f"{type(error).__name__}: {error}".strip()
        info.error = message + (f" ({hint})" if hint else "")
        info.traceback = "".join(traceback.format_exception(error))

    def unregister(self, name: str) -> None:
        """Remove a plugin and everything it registered (tests use this to clean up)."""
        self.registry.remove_provider(name)
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self.plugins.pop(name, None)


_HOST: PluginHost | None = None


def host() -> PluginHost:
    """The process-wide plugin host, loading entry points on first use."""
    global _HOST
    if _HOST is None:
        _HOST = PluginHost()
        _HOST.load_builtin()
        _HOST.load_entry_points()
    return _HOST


def registry() -> Registry:
    return host().registry


def reset() -> None:
    """Forget every loaded plugin; the next :func:`host` call rediscovers entry points."""
    global _HOST
    importlib.invalidate_caches()
    _HOST = None


def register_plugin(module: object, name: str) -> PluginInfo:
    """Register an in-process plugin object (a module or class with hookimpls), as tests and notebooks do."""
    return host().register_module(module, PluginInfo(name=name, module=getattr(module, "__name__", repr(module))))


def _label(spec) -> str:
    """How ``plugins list`` names a registration: ``encoder:whisper``, ``kind:codec``, ``architecture:speechlm``."""
    if isinstance(spec, ComponentKind):
        return f"kind:{spec.name}"
    if isinstance(spec, ArchitectureSpec):
        return f"architecture:{spec.name}"
    if isinstance(spec, ImporterSpec):
        return f"importer:{spec.name}"
    return f"{spec.kind}:{spec.name}"
