"""Validation: the top-level schema, then each component block against its registered options class.

Every error is collected and mapped back to its YAML node: ``file:line:col key.path: message (fix)``.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from slmzoo.card.errors import CardError, CardIssue, Location, did_you_mean, dotted
from slmzoo.card.schema import DEFAULT_ARCHITECTURE, card_model
from slmzoo.card.yaml_source import YAML_BOOL_WORDS, SourceMap
from slmzoo.registry import ComponentOptions, ComponentSpec, OptionsRuleError


class UnknownComponentError(ValueError):
    """A block names a component nobody registered; ``hint`` lists or suggests registered names."""

    def __init__(self, kind: str, name: Any, hint: str):
        super().__init__(f"unknown {kind} {name!r}")
        self.kind, self.name, self.hint = kind, name, hint


def resolve_block(kind: str, block: dict) -> tuple[ComponentSpec, ComponentOptions]:
    """The registered component a block names (``{type: NAME, ...options}``) and its validated options.

    Raises :class:`UnknownComponentError` or pydantic's ``ValidationError`` (locations relative to the block).
    Used for card sections and for blocks nested in a component's options (a ``multi`` encoder's encoders)."""
    from slmzoo.plugins import registry

    reg = registry()
    name = block.get("type")
    spec = reg.get(kind, name) if isinstance(name, str) else None
    if spec is None:
        names = reg.names(kind)
        raise UnknownComponentError(kind, name, did_you_mean(str(name), names) or
                                    f"registered {kind}s: {', '.join(names) or 'none'}")
    return spec, spec.options.model_validate({k: v for k, v in block.items() if k != "type"})


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class reached by following ``loc`` through ``model``'s fields."""
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        info = model.model_fields.get(part)
        if info is None:
            return None
        model = _first_model(info.annotation)
    return model


def _first_model(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _block_fields(data: Any, path: tuple, kind: str | None) -> list[str]:
    """Option names of a nested component block (e.g. a ``multi`` encoder's ``encoders[i]``)."""
    from slmzoo.plugins import registry

    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return []
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        return []
    spec = registry().get(kind, data["type"]) if kind else None
    return ["type", *spec.options.model_fields] if spec else []


def _issues(error: ValidationError, model: type[BaseModel], prefix: tuple, smap: SourceMap,
            default_file: str, data: Any = None, kind: str | None = None) -> list[CardIssue]:
    issues = []
    for item in error.errors():
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
        rule = (item.get("ctx") or {}).get("error")
        if isinstance(rule, OptionsRuleError):  # a cross-field rule: point at the field it names
            path = prefix + loc + (rule.field,)
            issues.append(CardIssue(smap.locate(path) or Location(default_file), dotted(path), rule.reason))
            continue
        path = prefix + loc
        kind = item["type"]
        where = smap.locate(path, prefer_key=kind == "extra_forbidden") or Location(default_file)
        hint = None
        if kind == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            fields = list(parent.model_fields) if parent else _block_fields(data, prefix + loc[:-1], kind)
            message = "unknown option" if prefix else "unknown key"
            hint = did_you_mean(loc[-1], fields) or (f"allowed: {', '.join(fields)}" if fields else None)
        elif kind == "missing":
            message = "required key is missing"
        else:
            message = item["msg"]
            if isinstance(item.get("input"), bool) and smap.raw.get(path, "").lower() in YAML_BOOL_WORDS:
                raw = smap.raw[path]
                hint = f"YAML reads unquoted {raw} as {str(item['input']).lower()}; quote it: '{raw}'"
        issues.append(CardIssue(where, dotted(path), message, hint))
    return issues


def validate(data: dict, smap: SourceMap, default_file: str = "<card>"):
    """Return ``(validated, {section: options}, resolved_dict, architecture)`` or raise :class:`CardError` with
    every problem: the architecture first (it says which sections exist), then the card's schema, then each
    component section against the options of the component it names."""
    from slmzoo.plugins import registry

    default_file = (smap.locate(()) or Location(default_file)).file
    issues: list[CardIssue] = []
    name = data.get("architecture", DEFAULT_ARCHITECTURE)
    spec = registry().get_architecture(name) if isinstance(name, str) else None
    if spec is None and isinstance(name, str):
        names = [a.name for a in registry().list_architectures()]
        hint = did_you_mean(name, names) or f"registered architectures: {', '.join(names) or 'none'}"
        issues.append(CardIssue(smap.locate(("architecture",)) or Location(default_file), "architecture",
                                f"unknown architecture {name!r}", hint))
    model = card_model(spec)
    validated = None
    try:
        validated = model.model_validate(data)
    except ValidationError as error:
        issues += _issues(error, model, (), smap, default_file)
    if spec is None:
        raise CardError(issues)

    options: dict[str, Any] = {}
    blocks: dict[str, dict] = {}
    for section in spec.sections:
        block = data.get(section.name, section.default)
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            continue  # already reported by the top-level schema (or an optional section left out)
        try:
            component, options[section.name] = resolve_block(section.kind, block)
            blocks[section.name] = {"type": component.name, **options[section.name].model_dump(mode="json")}
        except UnknownComponentError as error:
            issues.append(CardIssue(smap.locate((section.name, "type")) or Location(default_file),
                                    f"{section.name}.type", str(error), error.hint))
        except ValidationError as error:
            component = registry().get(section.kind, block["type"])
            issues += _issues(error, component.options, (section.name,), smap, default_file, data, section.kind)
    if validated is not None:
        issues += _train_issues(validated.train, spec, smap, default_file)

    if issues:
        raise CardError(issues)
    resolved = validated.model_dump(mode="json", exclude={"presets", "extends"})
    resolved.update(blocks)
    resolved["architecture"] = spec.name
    ordered = {key: resolved[key] for key in model.model_fields if key in resolved}
    return validated, options, ordered, spec


def _train_issues(train, spec, smap: SourceMap, default_file: str) -> list[CardIssue]:
    """``train.lr_groups`` names optimizer groups: the architecture's sections, or ``lora``."""
    groups = ("lora", *spec.section_names)
    issues = []
    for group in train.lr_groups:
        if group not in groups:
            path = ("train", "lr_groups", group)
            hint = did_you_mean(group, groups) or f"groups: {', '.join(groups)}"
            issues.append(CardIssue(smap.locate(path, prefer_key=True) or Location(default_file), dotted(path),
                                    "unknown learning-rate group", hint))
    return issues
