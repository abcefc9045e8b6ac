"""Per-key scheduling, shared by every command stage: one batch of a key in flight at a time (so an entity's
commands are applied in order, retries included), at most ``max_busy`` keys in flight at once.

Not thread-safe: its owner calls it under its own lock.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Generic, Hashable, TypeVar

__all__ = ["KeyedQueue"]

T = TypeVar("T")


class KeyedQueue(Generic[T]):
    def __init__(self, max_busy: int, max_batch: int = 1, joins: Callable[[T, T], bool] | None = None) -> None:
        """``joins(first, item)``: whether ``item`` may join a batch that starts with ``first`` (default: any)."""
        self.max_busy = max_busy
        self.max_batch = max_batch
        self._joins = joins
        self._waiting: dict[Hashable, deque[T]] = {}
        self._ready: deque[Hashable] = deque()  # keys with waiting items and no batch in flight
        self._busy: set[Hashable] = set()
        self.items = 0  # waiting

    @property
    def busy(self) -> int:
        return len(self._busy)

    @property
    def startable(self) -> bool:
        """Whether :meth:`take_ready` would start something now."""
        return bool(self._ready) and len(self._busy) < self.max_busy

    def put(self, key: Hashable, item: T) -> None:
        queue = self._waiting.get(key)
        if queue is None:
            queue = self._waiting[key] = deque()
            if key not in self._busy:
                self._ready.append(key)
        queue.append(item)
        self.items += 1

    def take_ready(self) -> list[tuple[Hashable, list[T]]]:
        """Batches that may start now (their keys become busy), in the order their keys became ready."""
        out = []
        while self._ready and len(self._busy) < self.max_busy:
            key = self._ready.popleft()
            batch = self._take(key)
            if batch:
                self._busy.add(key)
                out.append((key, batch))
        return out

    def release(self, key: Hashable, *, chain: bool = False) -> list[T] | None:
        """The batch of ``key`` finished. With ``chain``, what waits for the key starts at once as its next batch
        (returned; the key stays busy); otherwise the key queues behind the other ready keys."""
        if chain:
            batch = self._take(key)
            if batch:
                return batch
        self._busy.discard(key)
        if key in self._waiting and key not in self._ready:
            self._ready.append(key)
        return None

    def drain(self) -> list[T]:
        """Every waiting item, taken out (shutdown)."""
        items = [item for queue in self._waiting.values() for item in queue]
        self._waiting.clear()
        self._ready.clear()
        self.items = 0
        return items

    def _take(self, key: Hashable) -> list[T]:
        queue = self._waiting.get(key)
        if not queue:
            self._waiting.pop(key, None)
            return []
        first = queue.popleft()
        batch = [first]
        joins = self._joins
        while queue and len(batch) < self.max_batch and (joins is None or joins(first, queue[0])):
            batch.append(queue.popleft())
        if not queue:
            del self._waiting[key]
        self.items -= len(batch)
        return batch
