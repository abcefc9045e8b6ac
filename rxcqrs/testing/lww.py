"""A last-write-wins model of a Cassandra table, for the fast tier and the protocol's property tests.

Each cell keeps its value and write timestamp; a write replaces a cell only with a higher timestamp, and a
tie is resolved per cell as Cassandra resolves it (a tombstone wins, else the larger value bytes). A map
written whole leaves a collection tombstone at ``T - 1`` and its elements at ``T``: a newer overwrite hides
every older element, and replaying a write at ``T`` changes nothing. Conditional writes (Paxos) are stamped
with a wall clock, as Cassandra stamps them with their ballot.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any, Hashable, Mapping

__all__ = ["LwwTable", "WALL_CLOCK_START"]

#: microseconds of a wall clock in 2026 (about 1.7e15): where conditional writes' timestamps start
WALL_CLOCK_START = 1_764_000_000_000_000
_TOMBSTONE = object()


def _tie_key(value: Any) -> tuple[int, bytes]:
    return (1, b"") if value is _TOMBSTONE else (0, repr(value).encode())


class _Row:
    def __init__(self) -> None:
        self.cells: dict[str, tuple[Any, int]] = {}
        self.maps: dict[str, tuple[int, dict[Hashable, tuple[Any, int]]]] = {}  # column -> (tombstone ts, elements)


class LwwTable:
    """Rows by key; scalar columns and map columns (``maps``). Thread-safe."""

    def __init__(self, maps: tuple[str, ...] = ()) -> None:
        self.map_columns = set(maps)
        self._rows: dict[Hashable, _Row] = {}
        self._lock = threading.Lock()
        self._clock = itertools.count(WALL_CLOCK_START)
        self.writes = 0

    def write(self, key: Hashable, values: Mapping[str, Any], timestamp: int) -> None:
        """A plain write of ``values`` stamped ``timestamp`` (``None`` values are tombstones; maps whole)."""
        with self._lock:
            self.writes += 1
            row = self._rows.setdefault(key, _Row())
            for column, value in values.items():
                if column in self.map_columns:
                    self._write_map(row, column, value, timestamp)
                else:
                    self._write_cell(row.cells, column, _TOMBSTONE if value is None else value, timestamp)

    def conditional(self, key: Hashable, expected: Mapping[str, Any] | None, values: Mapping[str, Any]) -> bool:
        """A lightweight transaction: ``expected`` None = ``IF NOT EXISTS``, else ``IF col = v AND ...``;
        applied with a wall-clock timestamp."""
        with self._lock:
            current = self._visible(key)
            if expected is None:
                ok = current is None
            else:
                ok = current is not None and all(current.get(c) == v for c, v in expected.items())
            if not ok:
                return False
        self.write(key, values, next(self._clock))
        return True

    def read(self, key: Hashable) -> dict[str, Any] | None:
        with self._lock:
            return self._visible(key)

    def keys(self) -> list[Hashable]:
        with self._lock:
            return [k for k in self._rows if self._visible(k) is not None]

    @staticmethod
    def _write_cell(cells: dict[Any, tuple[Any, int]], column: Any, value: Any, timestamp: int) -> None:
        old = cells.get(column)
        if old is None or timestamp > old[1] or (timestamp == old[1] and _tie_key(value) > _tie_key(old[0])):
            cells[column] = (value, timestamp)

    def _write_map(self, row: _Row, column: str, value: Mapping[Hashable, Any] | None, timestamp: int) -> None:
        tombstone, elements = row.maps.get(column, (-1, {}))
        tombstone = max(tombstone, timestamp - 1)
        for k, v in (value or {}).items():
            self._write_cell(elements, k, v, timestamp)
        row.maps[column] = (tombstone, elements)

    def _visible(self, key: Hashable) -> dict[str, Any] | None:
        row = self._rows.get(key)
        if row is None:
            return None
        out: dict[str, Any] = {c: None if v is _TOMBSTONE else v for c, (v, _ts) in row.cells.items()}
        for column, (tombstone, elements) in row.maps.items():
            live = {k: v for k, (v, ts) in elements.items() if ts > tombstone and v is not _TOMBSTONE}
            out[column] = live or None
        if all(v is None for v in out.values()):
            return None
        return out
