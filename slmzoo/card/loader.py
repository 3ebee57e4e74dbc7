"""Loading a card: find it, resolve ``extends``, apply a preset and ``--set`` overrides, then validate.

The resolved card (after extends, preset and overrides, with every default filled in) is what ``show``
prints, what a checkpoint stores and what ``diff`` compares. Cards are data: a card can only name
registered components, so loading one never runs code.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from slmzoo.card.errors import CardError, CardIssue, Location, did_you_mean
from slmzoo.card.schema import component_sections
from slmzoo.card.yaml_source import SourceMap, parse_yaml

CARD_SUFFIXES = (".yaml", ".yml")
ATOMIC_KEYS = {"config"}  # component keys that presets and extends replace whole instead of merging


@dataclass
class ResolvedCard:
    """A validated card. ``data`` is the plain resolved dict (what ``show`` prints and a checkpoint stores);
    ``options`` the validated options of each component section; ``validated`` the typed card (pydantic), whose
    ``train`` and ``prompt`` settings are also reachable as ``card.train`` and ``card.prompt``."""

    data: dict[str, Any]
    source: str
    preset: str | None = None
    overrides: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # section -> ComponentOptions instance
    validated: Any = None  # an instance of slmzoo.card.schema.card_model(architecture)
    spec: Any = None  # the slmzoo.registry.ArchitectureSpec the card is built with

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def architecture(self) -> str:
        return self.spec.name

    @property
    def sections(self) -> tuple[str, ...]:
        """The card's component sections, in card order."""
        return self.spec.section_names

    @property
    def train(self):
        return self.validated.train

    @property
    def prompt(self):
        return self.validated.prompt

    def component(self, section: str) -> tuple[str, Any]:
        """``(type, options)`` of a component section (``encoder``, ``llm``, ...)."""
        return self.data[section]["type"], self.options[section]

    def to_yaml(self) -> str:
        return dump_yaml(self.data)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=None, width=100)


# -- finding cards --------------------------------------------------------------------------------
def card_index() -> dict[str, Path]:
    """Card name -> file, over every folder or file plugins registered (the first registration wins)."""
    from slmzoo.plugins import registry

    index: dict[str, Path] = {}
    for path, _provider in registry().card_paths:
        path = Path(path)
        files = sorted(p for s in CARD_SUFFIXES for p in path.glob(f"*{s}")) if path.is_dir() else [path]
        for file in files:
            index.setdefault(file.stem, file)
    return index


def find_card(source: str | Path, relative_to: Path | None = None) -> Path:
    """A path (absolute, relative to ``relative_to`` or the working directory) or a registered card name."""
    candidates = []
    text = str(source)
    if relative_to is not None:
        candidates.append(relative_to / text)
    candidates.append(Path(text))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    index = card_index()
    if text in index:
        return index[text]
    stem = Path(text).stem if text.endswith(CARD_SUFFIXES) else text
    if stem in index and not Path(text).parent.parts:
        return index[stem]
    hint = did_you_mean(stem, index) or f"known cards: {', '.join(sorted(index)) or 'none'}"
    raise CardError([CardIssue(Location(text), "", "no such card file or card name", hint)])


# -- resolving -------------------------------------------------------------------------------------
def _merge(base: dict, override: dict, base_src: SourceMap, over_src: SourceMap, prefix: tuple = (),
           sections: tuple[str, ...] | None = None) -> dict:
    """Deep-merge ``override`` into ``base`` (both dicts), moving source locations along.

    A component block whose ``type`` changes is replaced whole: stale options of the old type must not
    leak into the new one. An inline model ``config`` is replaced whole too: a tiny preset's config must
    not inherit, say, the full model's vocabulary size. ``sections``: the component blocks (default: those of
    the merged card's architecture).
    """
    if sections is None:
        sections = component_sections({**base, **{k: v for k, v in override.items() if k == "architecture"}})
    out = dict(base)
    for key, value in override.items():
        path = prefix + (key,)
        replace_block = (
            isinstance(value, dict) and isinstance(out.get(key), dict)
            and len(prefix) == 0 and key in sections
            and "type" in value and value["type"] != out[key].get("type")
        )
        atomic = key in ATOMIC_KEYS and len(prefix) == 1 and prefix[0] in sections
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not (replace_block or atomic):
            out[key] = _merge(out[key], value, base_src, over_src, path, sections)
            for table_b, table_o in ((base_src.keys, over_src.keys),):
                if path in table_o:
                    table_b[path] = table_o[path]
        else:
            out[key] = copy.deepcopy(value)
            base_src.drop(path)
            for mine, theirs in ((base_src.values, over_src.values), (base_src.keys, over_src.keys),
                                 (base_src.raw, over_src.raw)):
                for p, loc in theirs.items():
                    if p[: len(path)] == path:
                        mine[p] = loc
    return out


def _read(file: Path, seen: tuple[Path, ...] = ()) -> tuple[dict, SourceMap]:
    """Read one card file and everything it ``extends``, merged."""
    file = file.resolve()
    if file in seen:
        chain = " -> ".join(p.name for p in (*seen, file))
        raise CardError([CardIssue(Location(str(file)), "extends", f"extends cycle: {chain}", "remove one extends")])
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise CardError([CardIssue(Location(str(file)), "", f"cannot read card: {error.strerror or error}")]) from None
    data, source = parse_yaml(text, _display(file))
    if not isinstance(data, dict):
        raise CardError([CardIssue(Location(_display(file), 1, 1), "", "a card is a YAML mapping of keys to values")])
    parent = data.get("extends")
    if parent is None:
        return data, source
    if not isinstance(parent, str):
        raise CardError([CardIssue(source.locate(("extends",)), "extends", "expected a card name or path")])
    try:
        parent_file = find_card(parent, relative_to=file.parent)
    except CardError as error:
        issue = error.issues[0]
        raise CardError([CardIssue(source.locate(("extends",)), "extends", f"{parent!r}: {issue.message}",
                                   issue.hint)]) from None
    base, base_source = _read(parent_file, seen + (file,))
    _drop_stale_presets(base, base_source, data)
    merged = _merge(base, {k: v for k, v in data.items() if k != "extends"}, base_source, source)
    return merged, base_source


def _drop_stale_presets(base: dict, base_source: SourceMap, child: dict) -> None:
    """A child card that changes a component's ``type`` makes the parent's presets for it stale.

    The parent's ``presets.tiny.adapter: {k: 2}`` sizes the parent's adapter; merged into a child's
    different adapter it would be an unknown option. Such preset blocks are dropped (the child's own
    presets say how to shrink its component).
    """
    presets = base.get("presets")
    if not isinstance(presets, dict):
        return
    for section in component_sections({**base, **{k: v for k, v in child.items() if k == "architecture"}}):
        new, old = child.get(section), base.get(section)
        if not (isinstance(new, dict) and isinstance(old, dict) and "type" in new and new["type"] != old.get("type")):
            continue
        for name, block in presets.items():
            if isinstance(block, dict) and isinstance(block.get(section), dict) \
                    and block[section].get("type", old.get("type")) != new["type"]:
                del block[section]
                base_source.drop(("presets", name, section))


def _display(file: Path) -> str:
    try:
        return str(file.relative_to(Path.cwd()))
    except ValueError:
        return str(file)


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``"llm.lora.r=16"`` -> ``(("llm", "lora", "r"), 16)``; the value is read as YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise CardError([CardIssue(Location(f"--set {text}"), "", "expected KEY.PATH=VALUE", "e.g. --set llm.lora.r=16")])
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as error:
        raise CardError([CardIssue(Location(f"--set {text}"), key, f"value is not valid YAML: {error}")]) from None
    return tuple(key.split(".")), parsed


def _apply_override(data: dict, source: SourceMap, text: str) -> None:
    path, value = parse_override(text)
    node = data
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    leaf = path[-1]
    if len(path) == 2 and path[0] in component_sections(data) and leaf == "type" and node.get("type") != value:
        node.clear()  # a new component type replaces the whole block
        source.drop(path[:1])
    node[leaf] = value
    source.drop(path)
    loc = Location(f"--set {text}")
    source.values[path] = loc
    source.keys[path] = loc


def resolve(source: str | Path, preset: str | None = None, overrides: Iterable[str] = ()) -> tuple[dict, SourceMap, Path]:
    """The merged, unvalidated card dict and where each key came from."""
    file = find_card(source)
    data, smap = _read(file)
    presets = data.get("presets") or {}
    if preset is not None:
        if not isinstance(presets, dict) or preset not in presets:
            names = list(presets) if isinstance(presets, dict) else []
            hint = did_you_mean(preset, names) or f"presets of this card: {', '.join(names) or 'none'}"
            raise CardError([CardIssue(smap.locate(("presets",)) or Location(_display(file)), f"presets.{preset}",
                                       "no such preset", hint)])
        block = presets[preset]
        if not isinstance(block, dict):
            raise CardError([CardIssue(smap.locate(("presets", preset)), f"presets.{preset}",
                                       "a preset is a mapping of card keys to override")])
        preset_src = SourceMap()
        n = 2
        for table_p, table in ((preset_src.values, smap.values), (preset_src.keys, smap.keys),
                               (preset_src.raw, smap.raw)):
            for p, loc in table.items():
                if p[:n] == ("presets", preset) and len(p) > n:
                    table_p[p[n:]] = loc
        data = _merge(data, block, smap, preset_src)
    for text in overrides:
        _apply_override(data, smap, text)
    data.pop("presets", None)
    data.pop("extends", None)
    return data, smap, file


def load_card(source: str | Path | ResolvedCard, preset: str | None = None,
              overrides: Iterable[str] | None = None) -> ResolvedCard:
    """Load and validate a card; raise :class:`CardError` listing every problem."""
    if isinstance(source, ResolvedCard):
        if preset is None and not overrides:
            return source
        raise ValueError("pass a card path or name to apply a preset or overrides")
    from slmzoo.card.validate import validate

    overrides = list(overrides or [])
    data, smap, file = resolve(source, preset, overrides)
    validated, options, resolved, spec = validate(data, smap)
    return ResolvedCard(data=resolved, source=str(file), preset=preset, overrides=overrides, options=options,
                        validated=validated, spec=spec)


def load_resolved(data: dict, source: str = "<card>") -> ResolvedCard:
    """Validate an already-resolved card dict (e.g. a checkpoint's ``card.yaml``)."""
    from slmzoo.card.validate import validate

    smap = SourceMap()
    validated, options, resolved, spec = validate(data, smap, default_file=source)
    return ResolvedCard(data=resolved, source=source, options=options, validated=validated, spec=spec)
