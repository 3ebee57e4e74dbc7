"""Bad data never kills a run: each bad item is skipped, counted by reason, and the first few are named.

With ``strict`` the first bad item raises :class:`DataError` instead.
"""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger("slmzoo.data")


class DataError(RuntimeError):
    """A bad data item met in ``--strict`` mode; the message names the item and the reason."""


class DataIssues:
    def __init__(self, strict: bool = False, show_first: int = 5):
        self.strict = strict
        self.show_first = show_first
        self.counts: Counter[str] = Counter()
        self.examples: list[str] = []
        self._seen: set[str] = set()  # an item met again in a later epoch is counted once

    def report(self, item_id: str, reason: str, kind: str | None = None) -> None:
        """Record one skipped item (``kind`` is the counter key, e.g. ``missing``; default: the reason)."""
        if self.strict:
            raise DataError(f"{item_id}: {reason} (--strict stops at the first bad item)")
        if item_id in self._seen:
            return
        self._seen.add(item_id)
        self.counts[kind or reason] += 1
        if len(self.examples) < self.show_first:
            self.examples.append(f"{item_id}: {reason}")
            log.warning("skipping %s: %s", item_id, reason)

    def merge(self, issues: list[tuple[str, str, str]]) -> None:
        """Add issues a DataLoader worker found: ``(item_id, reason, kind)`` triples."""
        for item_id, reason, kind in issues:
            self.report(item_id, reason, kind)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict:
        return {"skipped": self.total, "by_reason": dict(self.counts), "first": list(self.examples)}
