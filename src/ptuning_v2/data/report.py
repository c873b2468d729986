"""What happened to every record read: used as is, changed (and why), or skipped (and why).

Results are reported on a data set; a row dropped or cut short without a word changes that data set.
The recipe fills one report while reading and tokenising, writes it to ``metrics.json`` under
``data_report`` and prints a line per split that lost or changed anything.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


class DataReport:
    """Per split: records read, and counts of records skipped or changed, each with its reason."""

    def __init__(self) -> None:
        self._read: Counter[str] = Counter()
        self._skipped: dict[str, Counter[str]] = {}
        self._changed: dict[str, Counter[str]] = {}

    def read(self, split: str, count: int) -> None:
        """``count`` records of ``split`` came in (before any limit or skip)."""
        self._read[split] += count

    def skip(self, split: str, reason: str, count: int = 1) -> None:
        """``count`` records of ``split`` were left out, for ``reason``."""
        if count:
            self._skipped.setdefault(split, Counter())[reason] += count

    def change(self, split: str, reason: str, count: int = 1) -> None:
        """``count`` records of ``split`` were used, but not exactly as written, for ``reason``."""
        if count:
            self._changed.setdefault(split, Counter())[reason] += count

    def used(self, split: str) -> int:
        return self._read[split] - sum(self._skipped.get(split, Counter()).values())

    def to_dict(self) -> dict[str, Any]:
        """``{split: {"read", "used", "skipped": {reason: n}, "changed": {reason: n}}}`` (JSON-ready)."""
        splits = list(dict.fromkeys([*self._read, *self._skipped, *self._changed]))
        return {
            split: {
                "read": self._read[split],
                "used": self.used(split),
                "skipped": dict(self._skipped.get(split, {})),
                "changed": dict(self._changed.get(split, {})),
            }
            for split in splits
        }

    def notices(self) -> list[str]:
        """One line per split that skipped or changed anything; nothing when every record was used as is."""
        lines = []
        for split, entry in self.to_dict().items():
            if not entry["skipped"] and not entry["changed"]:
                continue
            parts = [f"{n} skipped ({reason})" for reason, n in entry["skipped"].items()]
            parts += [f"{n} {reason}" for reason, n in entry["changed"].items()]
            lines.append(f"{split}: {entry['read']} read, {entry['used']} used; " + "; ".join(parts))
        return lines


def truncated_flags(encoded: Any, max_length: int) -> list[bool]:
    """Which rows of a tokenizer's output lost tokens to ``truncation=True``.

    Fast tokenizers keep what they cut in ``overflowing``; for slow ones a row at the length limit
    counts (it may have fit exactly).
    """
    encodings = getattr(encoded, "encodings", None)
    if encodings:
        return [bool(e.overflowing) for e in encodings]
    ids = encoded["input_ids"]
    return [len(row) >= max_length for row in (ids if ids and isinstance(ids[0], list) else [ids])]


def truncated_rows(encoded: Any, max_length: int) -> int:
    """How many rows of a tokenizer's output lost tokens to ``truncation=True``."""
    return sum(truncated_flags(encoded, max_length))
