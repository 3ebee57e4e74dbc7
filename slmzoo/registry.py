"""The registry: small module-level state, filled by plugins through ``register``.

Four things are registered, all importable without torch:

- a :class:`ComponentKind` (``encoder``, ``adapter``, ``fusion``, ``llm``, and whatever a plugin adds, such as
  ``codec``): a name, a description and the contract class its components subclass;
- a :class:`ComponentSpec`: one component of a kind, its options class and its implementation as a
  ``"module:attr"`` string, imported only when a model is built;
- an :class:`ArchitectureSpec`: how a model is assembled from a card: its sections (which kinds, which are
  required), the order they are built in, and its model class;
- an :class:`ImporterSpec`: how a released checkpoint of one family (Qwen2-Audio, Voxtral, ...) becomes a model
  of a zoo card: which releases it recognises and its implementation as a ``"module:attr"`` string.

Every list of kinds or sections in slmzoo (card schema, validation, ``show``, ``diff``, ``list``, the builder,
optimizer groups, checkpoints, summaries) comes from here, so ``list``, ``show``, ``diff`` and ``schema`` stay fast
and a plugin can add a kind or an architecture without touching the kernel.
"""

from __future__ import annotations

import fnmatch
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict

#: The architecture a card without an ``architecture:`` key uses.
DEFAULT_ARCHITECTURE = "speechlm"


class ComponentOptions(BaseModel):
    """Base class of every component's options: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class OptionsRuleError(ValueError):
    """A rule across several options of a component, broken; raise it from an options ``model_validator`` so that
    a card reports it at load (``show`` catches what ``build`` would), pointing at ``field``.

    ``str()`` is ``"{section}.{field}: {reason}"``; a card issue shows ``reason`` at the field's line."""

    def __init__(self, section: str, field: str, reason: str):
        super().__init__(f"{section}.{field}: {reason}")
        self.field, self.reason = field, reason


class EncoderOptionsBase(ComponentOptions):
    """Base of encoder options: what the processor reads without building the encoder."""

    def sampling_rate(self) -> int:
        """The rate waveforms reach the encoder at (the processor resamples to it)."""
        return 16000


class LanguageModelOptionsBase(ComponentOptions):
    """Base of language-model options: where the processor finds the tokenizer and chat format."""

    #: The chat format when the card's ``prompt.chat_template`` names none and the tokenizer has no template of
    #: its own (``None``: the tokenizer's, else chatml).
    default_chat_template: ClassVar[str | None] = None

    def tokenizer_source(self) -> str | None:
        """A hub id or folder of the tokenizer; ``None`` or ``"bytes"``: the built-in byte-level tokenizer."""
        return None


def load_object(target: str, owner: str) -> Any:
    """Import ``"package.module:attr"``; ``owner`` names who declared it in the error."""
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError as error:
        raise ImportError(f"{owner}: {target} not found") from error


@dataclass(frozen=True)
class ComponentKind:
    """A kind of component. ``base`` (``"module:Class"``) is the contract class its components subclass; the test
    kit (:mod:`slmzoo.testing`) checks components of the kind against it."""

    name: str
    description: str
    base: str
    plural: str = ""  # the word `slmzoo list` accepts besides the name; default name + "s"
    provider: str = "?"

    @property
    def words(self) -> tuple[str, ...]:
        return (self.name, self.plural or self.name + "s")

    @property
    def title(self) -> str:
        return self.plural or self.name + "s"

    def load_base(self) -> type:
        return load_object(self.base, f"{self.provider}: kind {self.name!r}")


@dataclass(frozen=True)
class ComponentSpec:
    """What a plugin declares about one component, without importing its implementation.

    ``factory`` is ``"package.module:Class"``; it is called as ``factory(options, context)`` where
    ``context`` is a :class:`slmzoo.builder.BuildContext` with the dimensions of upstream components.
    ``example`` is a small options block (a tiny random-weight configuration) the contract-test kit builds the
    component from; components used by a card's ``tiny`` preset may leave it out.
    """

    kind: str
    name: str
    description: str
    options: type[ComponentOptions]
    factory: str
    aliases: tuple[str, ...] = ()
    provider: str = "?"  # set by the registry: the plugin that registered it
    example: dict[str, Any] | None = None

    def load_factory(self) -> Callable[..., Any]:
        return load_object(self.factory, f"{self.provider}: component {self.kind} {self.name!r}")


@dataclass(frozen=True)
class Section:
    """One component block of a card: its key, the kind of component it names, and whether a card must give it
    (``default``: the block used when a card leaves it out)."""

    name: str
    kind: str
    required: bool = True
    default: dict[str, Any] | None = None
    description: str = ""


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: the card schema is cached per spec
class ArchitectureSpec:
    """How a model is assembled. ``sections`` are in card order; ``build_order`` (default: card order) is the
    order components are built in (a component may size itself from those built before it). ``model`` is the
    ``"module:Class"`` of the model (a :class:`slmzoo.architecture.Architecture`). ``card_fields`` is an optional
    pydantic model whose fields become top-level card keys of this architecture (loss weights, say).
    ``processor`` is an optional ``"module:function"`` making the architecture's processor,
    ``function(card, meta=..., tokenizer_dir=...)``; it must import no torch (``load_processor`` builds no model),
    and is used for building and for loading a saved model alike. Default: :meth:`Processor.from_card`."""

    name: str
    description: str
    sections: tuple[Section, ...]
    model: str
    build_order: tuple[str, ...] = ()
    card_fields: type[BaseModel] | None = None
    processor: str | None = None
    aliases: tuple[str, ...] = ()
    provider: str = "?"

    def __post_init__(self):
        names = [s.name for s in self.sections]
        if len(set(names)) != len(names):
            raise ValueError(f"architecture {self.name!r}: a section is declared twice: {names}")
        if self.build_order and sorted(self.build_order) != sorted(names):
            raise ValueError(f"architecture {self.name!r}: build_order {list(self.build_order)} must name each "
                             f"section once: {names}")

    @property
    def section_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sections)

    @property
    def order(self) -> tuple[str, ...]:
        return self.build_order or self.section_names

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def load_model_class(self) -> type:
        return load_object(self.model, f"{self.provider}: architecture {self.name!r}")

    def load_processor_factory(self) -> Callable[..., Any] | None:
        return load_object(self.processor, f"{self.provider}: architecture {self.name!r}") if self.processor else None


@dataclass(frozen=True)
class CommandSpec:
    """A CLI command a plugin adds: a typer app (a group of subcommands) or a function (one command)."""

    name: str
    command: Any
    help: str | None = None
    provider: str = "?"


@dataclass(frozen=True)
class ImporterSpec:
    """An importer of released checkpoints of one family onto the zoo card ``card``.

    A release folder is recognised torch-free from its ``config.json``: its ``architectures`` (first) or its
    ``model_type`` naming one of ``architectures`` / ``model_types``, or, for configs without either (NeMo's), the
    top-level ``config_keys`` all present. ``factory`` (``"module:Class"``, a :class:`slmzoo.importing.Importer`)
    is imported only when a release is imported."""

    name: str
    card: str
    description: str
    factory: str
    architectures: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()
    config_keys: tuple[str, ...] = ()
    provider: str = "?"

    def recognises(self, config: dict) -> bool:
        """Whether a release's ``config.json`` (a dict) is one this importer reads."""
        named = config.get("architectures") or []
        if any(name in self.architectures for name in named):
            return True
        if config.get("model_type") in self.model_types:
            return True
        return bool(self.config_keys) and all(key in config for key in self.config_keys)

    def load_factory(self) -> Callable[..., Any]:
        return load_object(self.factory, f"{self.provider}: importer {self.name!r}")


class DuplicateComponentError(ValueError):
    """Two plugins registered the same kind and name (or the same kind, architecture or command)."""


def _duplicate(what: str, name: str, existing_provider: str, existing: str, provider: str, new: str) -> Exception:
    return DuplicateComponentError(
        f"{what} {name!r} is registered twice: by plugin {existing_provider!r} ({existing}) and by plugin "
        f"{provider!r} ({new}). Rename one, or disable a plugin with SLMZOO_DISABLE_PLUGINS.")


@dataclass
class Registry:
    components: dict[tuple[str, str], ComponentSpec] = field(default_factory=dict)
    aliases: dict[tuple[str, str], str] = field(default_factory=dict)
    kinds: dict[str, ComponentKind] = field(default_factory=dict)
    architectures: dict[str, ArchitectureSpec] = field(default_factory=dict)
    architecture_aliases: dict[str, str] = field(default_factory=dict)
    commands: dict[str, CommandSpec] = field(default_factory=dict)
    importers: dict[str, ImporterSpec] = field(default_factory=dict)
    card_paths: list[tuple[str, str]] = field(default_factory=list)  # (path, provider)

    # -- adding -------------------------------------------------------------------------------------------
    def add(self, spec: ComponentSpec | ComponentKind | ArchitectureSpec | CommandSpec | ImporterSpec) -> None:
        """Register any of the five; the plugin host calls this for every ``register(...)`` of a plugin."""
        if isinstance(spec, ImporterSpec):
            return self.add_importer(spec)
        if isinstance(spec, ComponentKind):
            return self.add_kind(spec)
        if isinstance(spec, ArchitectureSpec):
            return self.add_architecture(spec)
        if isinstance(spec, CommandSpec):
            return self.add_command(spec)
        if isinstance(spec, ComponentSpec):
            return self.add_component(spec)
        raise TypeError(f"register() takes a ComponentSpec, ComponentKind, ArchitectureSpec, CommandSpec or "
                        f"ImporterSpec, not {type(spec).__name__}")

    def add_component(self, spec: ComponentSpec) -> None:
        for name in (spec.name, *spec.aliases):
            key = (spec.kind, name)
            existing = self.components.get(key) or self.components.get((spec.kind, self.aliases.get(key, "")))
            if existing is not None:
                raise _duplicate(spec.kind, name, existing.provider, existing.factory, spec.provider, spec.factory)
        self.components[(spec.kind, spec.name)] = spec
        for alias in spec.aliases:
            self.aliases[(spec.kind, alias)] = spec.name

    def add_kind(self, kind: ComponentKind) -> None:
        existing = self.kinds.get(kind.name)
        if existing is not None:
            raise _duplicate("component kind", kind.name, existing.provider, existing.base, kind.provider, kind.base)
        self.kinds[kind.name] = kind

    def add_architecture(self, spec: ArchitectureSpec) -> None:
        for name in (spec.name, *spec.aliases):
            existing = self.get_architecture(name)
            if existing is not None:
                raise _duplicate("architecture", name, existing.provider, existing.model, spec.provider, spec.model)
        self.architectures[spec.name] = spec
        for alias in spec.aliases:
            self.architecture_aliases[alias] = spec.name

    def add_command(self, spec: CommandSpec) -> None:
        existing = self.commands.get(spec.name)
        if existing is not None:
            raise _duplicate("command", spec.name, existing.provider, "", spec.provider, "")
        self.commands[spec.name] = spec

    def add_importer(self, spec: ImporterSpec) -> None:
        existing = self.importers.get(spec.name)
        if existing is not None:
            raise _duplicate("importer", spec.name, existing.provider, existing.factory, spec.provider, spec.factory)
        self.importers[spec.name] = spec

    def remove_provider(self, provider: str) -> None:
        for key, spec in list(self.components.items()):
            if spec.provider == provider:
                del self.components[key]
        self.aliases = {k: v for k, v in self.aliases.items() if (k[0], v) in self.components}
        self.kinds = {k: v for k, v in self.kinds.items() if v.provider != provider}
        self.architectures = {k: v for k, v in self.architectures.items() if v.provider != provider}
        self.architecture_aliases = {k: v for k, v in self.architecture_aliases.items() if v in self.architectures}
        self.commands = {k: v for k, v in self.commands.items() if v.provider != provider}
        self.importers = {k: v for k, v in self.importers.items() if v.provider != provider}
        self.card_paths = [(p, prov) for p, prov in self.card_paths if prov != provider]

    # -- looking up ---------------------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> ComponentSpec | None:
        name = self.aliases.get((kind, name), name)
        return self.components.get((kind, name))

    def get_architecture(self, name: str) -> ArchitectureSpec | None:
        return self.architectures.get(self.architecture_aliases.get(name, name))

    def names(self, kind: str) -> list[str]:
        return sorted(name for k, name in self.components if k == kind)

    def kind_names(self) -> list[str]:
        """Registered kinds in registration order, then kinds that components name but nobody registered."""
        extra = sorted({k for k, _ in self.components} - set(self.kinds))
        return [*self.kinds, *extra]

    def list(self, kind: str | None = None, pattern: str = "*") -> list[ComponentSpec]:
        """Components, optionally of one kind, whose name matches a glob (timm's ``list_models`` style)."""
        order = {k: i for i, k in enumerate(self.kind_names())}
        specs = [s for (k, n), s in self.components.items() if kind in (None, k) and fnmatch.fnmatch(n, pattern)]
        return sorted(specs, key=lambda s: (order.get(s.kind, len(order)), s.name))

    def list_architectures(self, pattern: str = "*") -> list[ArchitectureSpec]:
        return sorted((a for a in self.architectures.values() if fnmatch.fnmatch(a.name, pattern)),
                      key=lambda a: (a.name != DEFAULT_ARCHITECTURE, a.name))
