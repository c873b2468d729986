"""The one exception the data layer raises for bad input, always pointing at where the problem is."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad data file or bad data request.

    The message is ``file: line N: record 'id': field 'x': problem`` with the parts that are known,
    so a user can open the file at the right place instead of guessing which row broke training.
    """

    def __init__(
        self,
        problem: str,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        record: str | None = None,
    ) -> None:
        self.problem = problem
        self.file = None if file is None else str(file)
        self.line = line
        self.field = field
        self.record = record
        parts = []
        if self.file is not None:
            parts.append(self.file)
        if line is not None:
            parts.append(f"line {line}")
        if record is not None:
            parts.append(f"record {record!r}")
        if field is not None:
            parts.append(f"field {field!r}")
        parts.append(problem)
        super().__init__(": ".join(parts))

    def __reduce__(self) -> tuple:
        # Exceptions are pickled from ``args`` (the formatted message); rebuild from the parts instead
        # so a DataError raised in a DataLoader worker or a map() subprocess arrives intact.
        return (type(self), (self.problem, self.file, self.line, self.field, self.record))
