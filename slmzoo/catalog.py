"""What is installed, as rows of plain data: cards, components, kinds and architectures (``slmzoo list``).

Torch-free: cards are resolved without validation (a card with problems is still listed, with its first problem),
and components are read from their specs. Only :func:`add_sizes` builds models (on the meta device).
"""

from __future__ import annotations

from typing import Any

from slmzoo.registry import DEFAULT_ARCHITECTURE


def _block_type(data: dict, section: str, default: dict | None = None) -> str | None:
    block = data.get(section, default)
    return block.get("type") if isinstance(block, dict) else None


def card_rows() -> list[dict[str, Any]]:
    """One row per registered card: its architecture, each section's component type, the LLM backbone, paper and
    sizes. The LLM section (``llm``) shows the backbone (``pretrained`` or the config's ``model_type``) and its
    component type as ``llm_type``."""
    from slmzoo.card.errors import CardError
    from slmzoo.card.loader import card_index, resolve
    from slmzoo.card.schema import architecture_of

    rows = []
    for name, path in sorted(card_index().items()):
        row: dict[str, Any] = {"name": name, "path": str(path)}
        try:
            data, _, _ = resolve(path)
        except CardError as error:
            row["error"] = str(error.issues[0]) if error.issues else str(error)
            rows.append(row)
            continue
        spec = architecture_of(data)
        sections = spec.sections if spec is not None else ()
        row["year"] = data.get("year")
        row["architecture"] = data.get("architecture", DEFAULT_ARCHITECTURE)
        row["components"] = {s.name: _block_type(data, s.name, s.default) for s in sections}
        for section in sections:
            if section.kind == "llm":
                llm = data.get(section.name) if isinstance(data.get(section.name), dict) else {}
                config = llm.get("config") if isinstance(llm.get("config"), dict) else {}
                row[section.name] = llm.get("pretrained") or config.get("model_type")
                row[f"{section.name}_type"] = _block_type(data, section.name)
            else:
                row[section.name] = row["components"][section.name]
        row.update({"paper": data.get("paper"), "published_params": data.get("published_params"),
                    "description": data.get("description", "")})
        rows.append(row)
    return rows


def card_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The section columns of a cards table: every listed card's sections, in architecture order."""
    from slmzoo.plugins import registry

    columns: dict[str, None] = {}
    for row in rows:
        spec = registry().get_architecture(row.get("architecture", DEFAULT_ARCHITECTURE))
        for section in spec.section_names if spec is not None else row.get("components", {}):
            columns.setdefault(section)
    return list(columns)


def by_architecture(rows: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Card rows grouped by architecture, ``speechlm`` first (a card that does not load goes with it): one table
    per architecture, each with its own sections as columns."""
    groups: dict[str, list[dict[str, Any]]] = {DEFAULT_ARCHITECTURE: []}
    for row in rows:
        name = DEFAULT_ARCHITECTURE if "error" in row else row.get("architecture", DEFAULT_ARCHITECTURE)
        groups.setdefault(name, []).append(row)
    return [(name, group) for name, group in groups.items() if group or name == DEFAULT_ARCHITECTURE]


def component_rows(kind: str | None = None, pattern: str = "*") -> list[dict[str, Any]]:
    from slmzoo.plugins import registry

    return [{"kind": s.kind, "name": s.name, "aliases": list(s.aliases), "plugin": s.provider,
             "description": s.description, "factory": s.factory}
            for s in registry().list(kind, pattern)]


def architecture_rows(pattern: str = "*") -> list[dict[str, Any]]:
    from slmzoo.plugins import registry

    return [{"name": a.name, "aliases": list(a.aliases), "plugin": a.provider, "description": a.description,
             "model": a.model,
             "sections": [{"name": s.name, "kind": s.kind, "required": s.required, "default": s.default}
                          for s in a.sections]}
            for a in registry().list_architectures(pattern)]


def kind_rows() -> list[dict[str, Any]]:
    from slmzoo.plugins import registry

    reg = registry()
    return [{"name": name, "plugin": kind.provider if kind else None, "base": kind.base if kind else None,
             "description": kind.description if kind else "(no plugin registered this kind)",
             "components": len(reg.names(name))}
            for name in reg.kind_names() for kind in [reg.kinds.get(name)]]


def kind_words() -> dict[str, str]:
    """Word -> kind for ``slmzoo list WORD``: each registered kind by its name and plural."""
    from slmzoo.plugins import registry

    reg = registry()
    words: dict[str, str] = {}
    for name in reg.kind_names():
        kind = reg.kinds.get(name)
        for word in kind.words if kind else (name, name + "s"):
            words.setdefault(word, name)
    return words


def add_sizes(rows: list[dict[str, Any]]) -> None:
    """Fill ``params`` of each row from a meta-device build (imports torch; no weights, no memory)."""
    from slmzoo.builder import build
    from slmzoo.card.loader import load_card

    for r in rows:
        if "error" not in r:
            r["params"] = build(load_card(r["path"]), meta=True).num_parameters()


def human(n: int | float | None) -> str:
    """``12345678`` -> ``12.3M``; ``1720000000`` -> ``1.72B`` (three significant digits)."""
    if n is None:
        return "-"
    n = float(n)
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            value = n / scale
            text = f"{value:.3g}" if value < 1000 else f"{value:.0f}"
            return text + unit
    return f"{n:.0f}"


def size_text(row: dict[str, Any]) -> str:
    """The meta-build count when computed (``--sizes``), else the published one, else blank."""
    if row.get("params") is not None:
        return human(row["params"])
    return f"{human(row['published_params'])} (published)" if row.get("published_params") else ""


def _md(value: Any) -> str:
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def cards_markdown(rows: list[dict[str, Any]]) -> str:
    """The cards table as Markdown (the README's zoo table): one table per architecture, the ``speechlm`` one first
    and untitled, each other one under a line naming its architecture."""
    tables = []
    for architecture, group in by_architecture(rows):
        columns = card_columns(group)
        titles = [c.upper() if c == "llm" else c.replace("_", " ").capitalize() for c in columns]
        head = ["Card", "Year", *titles, "Size", "Paper"]
        lines = [] if architecture == DEFAULT_ARCHITECTURE else [f"Architecture `{architecture}`:", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in group:
            paper = f"[link]({r['paper']})" if r.get("paper") else ""
            cells = [r["name"], r.get("year"), *(r.get(c) for c in columns), size_text(r)]
            lines.append("| " + " | ".join(_md(v) for v in cells) + f" | {paper} |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables) + "\n"
