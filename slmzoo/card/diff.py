"""Comparing two resolved cards, path by path.

Nested mappings are flattened to dotted key paths (``llm.lora.r``); lists are compared as values. A
component whose ``type`` differs is reported once, as the whole block being replaced: option-by-option
rows between two different components would compare unrelated things.

Changes are grouped by the cards' component sections (their architectures' sections, in card order), then
``prompt``, ``train`` and ``other``. Data in, data out: no torch. ``slmzoo diff`` renders the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slmzoo.card.schema import component_sections

#: The groups after the component sections, in display order; keys outside every group go to ``other``.
TRAILING_GROUPS = ("prompt", "train", "other")


class _Missing:
    """A key present on one side only."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<missing>"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


@dataclass(frozen=True)
class Change:
    """One difference. ``kind`` is ``changed``, ``added`` (right only), ``removed`` (left only) or
    ``replaced`` (a component block whose ``type`` differs; ``left``/``right`` are the whole blocks)."""

    path: str
    kind: str
    left: Any = MISSING
    right: Any = MISSING
    section: str = field(default="other", compare=False)  # the group it is shown in

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "section": self.section, "kind": self.kind}
        if self.left is not MISSING:
            out["left"] = self.left
        if self.right is not MISSING:
            out["right"] = self.right
        return out


def groups_of(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, ...]:
    """The groups of a diff of ``a`` and ``b``: their component sections in card order, then the trailing ones."""
    return tuple(dict.fromkeys([*component_sections(a), *component_sections(b), *TRAILING_GROUPS]))


def section_of(path: str, groups: tuple[str, ...] = TRAILING_GROUPS) -> str:
    head = path.split(".", 1)[0]
    return head if head in groups else "other"


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1, "c": [1, 2]}}`` -> ``{"a.b": 1, "a.c": [1, 2]}``; an empty mapping stays a value."""
    if not isinstance(data, dict) or (not data and prefix):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, path))
    return out


def diff_cards(a: dict[str, Any], b: dict[str, Any]) -> list[Change]:
    """Every difference between two resolved cards, ordered by section then by key order."""
    changes: list[Change] = []
    groups = groups_of(a, b)
    a, b = dict(a), dict(b)
    for section in groups[:-len(TRAILING_GROUPS)]:
        block_a, block_b = a.get(section), b.get(section)
        if (isinstance(block_a, dict) and isinstance(block_b, dict)
                and block_a.get("type") != block_b.get("type")):
            changes.append(Change(section, "replaced", block_a, block_b))
            a.pop(section)
            b.pop(section)
    _walk(a, b, "", changes)
    changes = [Change(c.path, c.kind, c.left, c.right, section_of(c.path, groups)) for c in changes]
    order = {name: i for i, name in enumerate(groups)}
    return sorted(changes, key=lambda c: order[c.section])  # stable: key order kept within a section


def _walk(a: dict, b: dict, prefix: str, changes: list[Change]) -> None:
    for key in list(a) + [k for k in b if k not in a]:
        path = f"{prefix}.{key}" if prefix else str(key)
        left, right = a.get(key, MISSING), b.get(key, MISSING)
        if isinstance(left, dict) and isinstance(right, dict) and left and right:
            _walk(left, right, path, changes)
        elif left is MISSING:
            changes += [Change(p, "added", right=v) for p, v in flatten(right, path).items()]
        elif right is MISSING:
            changes += [Change(p, "removed", left=v) for p, v in flatten(left, path).items()]
        elif not _equal(left, right):  # a mapping on one side and a value on the other is one row
            changes.append(Change(path, "changed", left, right))


def _equal(left: Any, right: Any) -> bool:
    # YAML reads 1 and 1.0 differently; a card that says lr: 1 means the same as lr: 1.0. Booleans stay distinct.
    if isinstance(left, bool) or isinstance(right, bool):
        return left is right
    return left == right


def group(changes: list[Change]) -> dict[str, list[Change]]:
    """Changes by section, in the order :func:`diff_cards` returned them, empty sections left out."""
    out: dict[str, list[Change]] = {}
    for change in changes:
        out.setdefault(change.section, []).append(change)
    return out
