"""The component registry: small module-level state, filled by plugins through ``register``.

A :class:`ComponentSpec` is importable without torch. Its ``factory`` is a ``"module:attr"`` string,
resolved only when a model is built, so that ``list``, ``show``, ``diff`` and ``schema`` stay fast.
"""

from __future__ import annotations

import fnmatch
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict

#: Kinds the kernel knows how to assemble. Plugins may register further kinds (feature extractors,
#: prompt formats); the builder only consumes these four.
COMPONENT_KINDS = ("encoder", "adapter", "fusion", "llm")


class ComponentOptions(BaseModel):
    """Base class of every component's options: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


@dataclass(frozen=True)
class ComponentSpec:
    """What a plugin declares about one component, without importing its implementation.

    ``factory`` is ``"package.module:Class"``; it is called as ``factory(options, context)`` where
    ``context`` is a :class:`slmzoo.builder.BuildContext` with the dimensions of upstream components.
    """

    kind: str
    name: str
    description: str
    options: type[ComponentOptions]
    factory: str
    aliases: tuple[str, ...] = ()
    provider: str = "?"  # set by the registry: the plugin that registered it

    def load_factory(self) -> Callable[..., Any]:
        module_name, _, attr = self.factory.partition(":")
        module = importlib.import_module(module_name)
        try:
            return getattr(module, attr)
        except AttributeError as error:
            raise ImportError(f"{self.provider}: component {self.kind} {self.name!r}: {self.factory} not found") from error


class DuplicateComponentError(ValueError):
    """Two plugins registered the same kind and name."""


@dataclass
class Registry:
    components: dict[tuple[str, str], ComponentSpec] = field(default_factory=dict)
    aliases: dict[tuple[str, str], str] = field(default_factory=dict)
    card_paths: list[tuple[str, str]] = field(default_factory=list)  # (path, provider)

    def add(self, spec: ComponentSpec) -> None:
        for name in (spec.name, *spec.aliases):
            key = (spec.kind, name)
            existing = self.components.get(key) or self.components.get((spec.kind, self.aliases.get(key, "")))
            if existing is not None:
                raise DuplicateComponentError(
                    f"{spec.kind} {name!r} is registered twice: by plugin {existing.provider!r} "
                    f"({existing.factory}) and by plugin {spec.provider!r} ({spec.factory}). "
                    "Rename one, or disable a plugin with SLMZOO_DISABLE_PLUGINS."
                )
        self.components[(spec.kind, spec.name)] = spec
        for alias in spec.aliases:
            self.aliases[(spec.kind, alias)] = spec.name

    def remove_provider(self, provider: str) -> None:
        for key, spec in list(self.components.items()):
            if spec.provider == provider:
                del self.components[key]
        self.aliases = {k: v for k, v in self.aliases.items() if (k[0], v) in self.components}
        self.card_paths = [(p, prov) for p, prov in self.card_paths if prov != provider]

    def get(self, kind: str, name: str) -> ComponentSpec | None:
        name = self.aliases.get((kind, name), name)
        return self.components.get((kind, name))

    def names(self, kind: str) -> list[str]:
        return sorted(name for k, name in self.components if k == kind)

    def list(self, kind: str | None = None, pattern: str = "*") -> list[ComponentSpec]:
        """Components, optionally of one kind, whose name matches a glob (timm's ``list_models`` style)."""
        specs = [s for (k, n), s in self.components.items() if kind in (None, k) and fnmatch.fnmatch(n, pattern)]
        return sorted(specs, key=lambda s: (COMPONENT_KINDS.index(s.kind) if s.kind in COMPONENT_KINDS else 99, s.name))
