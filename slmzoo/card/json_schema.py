"""The JSON Schema of cards, including every installed plugin's components.

The top level comes from the card schema of each registered architecture (:func:`slmzoo.card.schema.card_model`):
the default architecture's keys, plus every other architecture's sections, each allowed only in cards that name
that architecture. Each component section (``encoder``, ``adapter``, ``fusion``, ``llm``, ...) becomes a union
discriminated by ``type``: one branch per registered component of the section's kind, holding
``type: const NAME`` and that component's own options schema (unknown options rejected). Editors (VS Code's YAML extension, ``# yaml-language-server: $schema=...``) use it for
completion and checking; ``slmzoo schema > card.schema.json``.

Imports no torch: options classes are plain pydantic models.
"""

from __future__ import annotations

import copy
from typing import Any

from slmzoo.card.schema import DEFAULT_ARCHITECTURE, card_model

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _rewrite_refs(node: Any, mapping: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value in mapping:
                out[key] = mapping[value]
            else:
                out[key] = _rewrite_refs(value, mapping)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(item, mapping) for item in node]
    return node


def component_schema(spec, defs: dict[str, Any]) -> dict[str, Any]:
    """The schema of one component block; the options' nested definitions are moved into ``defs``."""
    schema = copy.deepcopy(spec.options.model_json_schema())
    own_defs = schema.pop("$defs", {})
    prefix = f"{spec.kind}.{spec.name}."
    mapping = {f"#/$defs/{name}": f"#/$defs/{prefix}{name}" for name in own_defs}
    for name, definition in own_defs.items():
        defs[prefix + name] = _rewrite_refs(definition, mapping)
    schema = _rewrite_refs(schema, mapping)
    names = [spec.name, *spec.aliases]
    type_schema: dict[str, Any] = {"const": spec.name} if len(names) == 1 else {"enum": names}
    type_schema["description"] = spec.description
    properties = {"type": type_schema, **schema.get("properties", {})}
    out: dict[str, Any] = {
        "title": f"{spec.kind} {spec.name}",
        "description": f"{spec.description} (plugin {spec.provider})",
        "type": "object",
        "properties": properties,
        "required": ["type", *[r for r in schema.get("required", []) if r != "type"]],
        "additionalProperties": False,
    }
    return out


def _section_union(kind: str, registry, defs: dict[str, Any]) -> dict[str, Any]:
    """A component block of ``kind``: ``type`` names a registered component, the rest are its options."""
    branches, mapping = [], {}
    for spec in registry.list(kind):
        ref = f"#/$defs/{kind}:{spec.name}"
        defs[f"{kind}:{spec.name}"] = component_schema(spec, defs)
        branches.append({"$ref": ref})
        for name in (spec.name, *spec.aliases):
            mapping[name] = ref
    return {
        "description": f"The {kind}: a registered {kind} name as `type`, plus its options. A card that "
                       "extends another may leave `type` out to override options of the inherited block.",
        "type": "object",
        "properties": {"type": {"enum": sorted(mapping)} if mapping else {"type": "string"}},
        "if": {"required": ["type"]},
        "then": {"oneOf": branches},
        # OpenAPI-style hint for tools that understand it; JSON Schema validators ignore it.
        "discriminator": {"propertyName": "type", "mapping": mapping},
    }


def card_json_schema(registry=None) -> dict[str, Any]:
    """The JSON Schema of a card file with the components registered in ``registry`` (default: installed)."""
    if registry is None:
        from slmzoo.plugins import registry as _registry

        registry = _registry()
    architectures = registry.list_architectures()
    default = registry.get_architecture(DEFAULT_ARCHITECTURE) or (architectures[0] if architectures else None)
    schema = copy.deepcopy(card_model(default).model_json_schema())
    defs: dict[str, Any] = schema.pop("$defs", {})
    defs.pop("ComponentBlock", None)
    properties = schema["properties"]
    conditions = []
    for arch in architectures:
        own = {}
        for section in arch.sections:
            union = _section_union(section.kind, registry, defs)
            if section.default:
                union["default"] = section.default
            own[section.name] = union
        extra = copy.deepcopy(arch.card_fields.model_json_schema()) if arch.card_fields is not None else {}
        defs.update(extra.pop("$defs", {}))
        own.update(extra.get("properties", {}))
        for key, value in own.items():
            if arch is default or key not in properties:
                properties[key] = value
        is_this = {"properties": {"architecture": {"const": arch.name}}, "required": ["architecture"]}
        if arch is default:
            is_this = {"anyOf": [{"not": {"required": ["architecture"]}}, is_this]}
        # A card that extends another states only what it changes.
        required = [s.name for s in arch.sections if s.required]
        then: dict[str, Any] = {"if": {"not": {"required": ["extends"]}}, "then": {"required": ["name", *required]}}
        others = sorted({s.name for a in architectures if a is not arch for s in a.sections} - set(own))
        if others:
            then["properties"] = {name: False for name in others}
        conditions.append({"if": is_this, "then": then})
    properties["architecture"] = {**properties.get("architecture", {}),
                                  "enum": [a.name for a in architectures] + [x for a in architectures
                                                                              for x in a.aliases]}
    schema.pop("required", None)
    if conditions:
        schema["allOf"] = conditions
    # presets and extended cards override any subset of keys: keep them loosely typed.
    properties["presets"]["additionalProperties"] = {"type": "object"}
    schema.pop("title", None)
    schema.pop("description", None)
    ordered = {"$schema": SCHEMA_DIALECT, "title": "slmzoo card",
               "description": "A slmzoo model card: `slmzoo schema` lists the components installed when it ran."}
    ordered.update(schema)
    ordered["$defs"] = dict(sorted(defs.items()))
    return ordered
