"""YAML parsing that keeps where every key and value came from, and catches YAML's pitfalls.

PyYAML's ``compose`` gives a node tree with line and column per node; we construct plain Python data
from it ourselves, recording ``path -> Location`` for keys and values, so that any later error
(pydantic's, a did-you-mean) can point at the exact line. Pitfalls caught here: tabs, duplicate keys
(YAML silently keeps the last), and keys such as ``off:`` or ``yes:`` that YAML 1.1 reads as booleans.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from slmzoo.card.errors import CardError, CardIssue, Location, dotted

Path_ = tuple  # a key path: ("encoder", "config", "d_model")

YAML_BOOL_WORDS = {"y", "yes", "n", "no", "on", "off", "true", "false"}


@dataclass
class SourceMap:
    """Where each key path of a card came from. Merging cards merges their maps."""

    values: dict[Path_, Location] = field(default_factory=dict)
    keys: dict[Path_, Location] = field(default_factory=dict)
    raw: dict[Path_, str] = field(default_factory=dict)  # the unquoted scalar text, for YAML-pitfall hints

    def locate(self, path: Path_, prefer_key: bool = False) -> Location | None:
        path = tuple(path)
        while True:
            found = (self.keys.get(path) or self.values.get(path)) if prefer_key else (
                self.values.get(path) or self.keys.get(path))
            if found is not None or not path:
                return found
            path = path[:-1]

    def drop(self, prefix: Path_) -> None:
        n = len(prefix)
        for table in (self.values, self.keys, self.raw):
            for path in [p for p in table if p[:n] == prefix]:
                del table[path]

    def update(self, other: "SourceMap", prefix: Path_ = ()) -> None:
        for mine, theirs in ((self.values, other.values), (self.keys, other.keys), (self.raw, other.raw)):
            for path, loc in theirs.items():
                mine[prefix + path] = loc


_CONSTRUCTOR = yaml.SafeLoader("")


def _loc(file: str, mark) -> Location:
    return Location(file, mark.line + 1, mark.column + 1)


def parse_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse YAML text into plain data and a :class:`SourceMap`; raise :class:`CardError` with every problem."""
    issues: list[CardIssue] = []
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        location = _loc(file, mark) if mark else Location(file)
        problem = error.problem or str(error)
        if "\t" in problem or "'\\t'" in problem:
            issues.append(CardIssue(location, "", "tab character in indentation",
                                    "YAML indents with spaces only: replace the tab with spaces"))
        else:
            issues.append(CardIssue(location, "", f"invalid YAML: {problem}", error.context))
        raise CardError(issues) from None
    except yaml.YAMLError as error:
        raise CardError([CardIssue(Location(file), "", f"invalid YAML: {error}")]) from None
    source = SourceMap()
    if node is None:
        return {}, source
    data = _construct(node, (), file, source, issues)
    if issues:
        raise CardError(issues)
    return data, source


def _construct(node, path: Path_, file: str, source: SourceMap, issues: list[CardIssue]) -> Any:
    source.values[path] = _loc(file, node.start_mark)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        first_seen: dict[Any, Location] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                issues.append(CardIssue(_loc(file, key_node.start_mark), dotted(path), "YAML merge keys (<<) are not supported",
                                        "use extends: or presets instead"))
                continue
            key = _CONSTRUCTOR.construct_object(key_node)  # scalars only
            key_loc = _loc(file, key_node.start_mark)
            if isinstance(key, bool) and key_node.style is None and key_node.value.lower() in YAML_BOOL_WORDS:
                issues.append(CardIssue(key_loc, dotted(path + (key_node.value,)),
                                        f"YAML reads the key {key_node.value!r} as the boolean {str(key).lower()}",
                                        f"quote it: '{key_node.value}'"))
                key = key_node.value
            elif not isinstance(key, (str, int)):
                issues.append(CardIssue(key_loc, dotted(path), f"key {key_node.value!r} is not a string",
                                        "quote it"))
                key = str(key_node.value)
            if key in first_seen:
                issues.append(CardIssue(key_loc, dotted(path + (key,)),
                                        f"duplicate key (first at line {first_seen[key].line}); YAML would keep only this one",
                                        "remove one of them"))
            first_seen[key] = key_loc
            source.keys[path + (key,)] = key_loc
            out[key] = _construct(value_node, path + (key,), file, source, issues)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(child, path + (i,), file, source, issues) for i, child in enumerate(node.value)]
    if node.style is None:
        source.raw[path] = node.value
    return _CONSTRUCTOR.construct_object(node)
