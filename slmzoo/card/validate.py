"""Validation: the top-level schema, then each component block against its registered options class.

Every error is collected and mapped back to its YAML node: ``file:line:col key.path: message (fix)``.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from slmzoo.card.errors import CardError, CardIssue, Location, did_you_mean, dotted
from slmzoo.card.schema import SECTION_KINDS, Card
from slmzoo.card.yaml_source import YAML_BOOL_WORDS, SourceMap


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
            default_file: str, data: Any = None) -> list[CardIssue]:
    issues = []
    for item in error.errors():
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
        path = prefix + loc
        kind = item["type"]
        where = smap.locate(path, prefer_key=kind == "extra_forbidden") or Location(default_file)
        hint = None
        if kind == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            fields = list(parent.model_fields) if parent else _block_fields(
                data, prefix + loc[:-1], SECTION_KINDS.get(prefix[0]) if prefix else None)
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
    """Return ``(Card, {section: options}, resolved_dict)`` or raise :class:`CardError` with every problem."""
    from slmzoo.plugins import registry

    default_file = (smap.locate(()) or Location(default_file)).file
    issues: list[CardIssue] = []
    card = None
    try:
        card = Card.model_validate(data)
    except ValidationError as error:
        issues += _issues(error, Card, (), smap, default_file)

    reg = registry()
    options: dict[str, Any] = {}
    blocks: dict[str, dict] = {}
    for section, kind in SECTION_KINDS.items():
        block = data.get(section, {"type": "concat"} if section == "fusion" else None)
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            continue  # already reported by the top-level schema
        name = block["type"]
        spec = reg.get(kind, name)
        if spec is None:
            names = reg.names(kind)
            hint = did_you_mean(name, names) or f"registered {kind}s: {', '.join(names) or 'none'}"
            issues.append(CardIssue(smap.locate((section, "type")) or Location(default_file),
                                    f"{section}.type", f"unknown {kind} {name!r}", hint))
            continue
        try:
            options[section] = spec.options.model_validate({k: v for k, v in block.items() if k != "type"})
            blocks[section] = {"type": spec.name, **options[section].model_dump(mode="json")}
        except ValidationError as error:
            issues += _issues(error, spec.options, (section,), smap, default_file, data)

    if issues:
        raise CardError(issues)
    resolved = card.model_dump(mode="json", exclude={"presets", "extends"})
    resolved.update(blocks)
    ordered = {key: resolved[key] for key in Card.model_fields if key in resolved}
    return card, options, ordered
