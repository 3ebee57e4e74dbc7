"""Card errors for people: every problem at once, each with file, line, column, key path and a fix."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Location:
    file: str
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based

    def __str__(self) -> str:
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class CardIssue:
    location: Location
    path: str  # dotted key path, "" for the whole card
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        text = f"{self.location} {self.path}: {self.message}" if self.path else f"{self.location}: {self.message}"
        return text + (f" ({self.hint})" if self.hint else "")


class CardError(Exception):
    """One or more problems with a card; ``str()`` lists them all, one per line."""

    def __init__(self, issues: Iterable[CardIssue]):
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(str(word), sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean {matches[0]}?" if matches else None


def dotted(path: Iterable) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
