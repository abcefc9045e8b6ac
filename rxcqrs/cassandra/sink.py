"""CassandraSink: executes statements (inserts, deletes) with bounded concurrency and acks each envelope.

Values are statements (``BoundStatement``, ``SimpleStatement``) or ``(query, params)``. Transient errors
(unavailable, overloaded, no host) are always retried; unknown outcomes (write timeouts) only for idempotent
statements (``statement.is_idempotent`` or ``idempotent=True``), otherwise they stop the flow; permanent
errors (a missing table) fail at once (see :mod:`rxcqrs.cassandra.outcomes`).
"""

from __future__ import annotations

from typing import Any

from rxcqrs.backoff import Backoff
from rxcqrs.cassandra.executor import CassandraExecutor
from rxcqrs.cassandra.stage import ExecutorSink, OrderBy, order_key
from rxcqrs.messages import Envelope

__all__ = ["CassandraSink"]


class CassandraSink(ExecutorSink):
    def __init__(self, session: Any, *, max_concurrency: int = 64, backoff: Backoff | None = None,
                 idempotent: bool | None = None, order_by: OrderBy = None, name: str = "cassandra_sink") -> None:
        super().__init__()
        self.idempotent = idempotent
        self.order_by = order_by
        self.executor = CassandraExecutor(session, max_concurrency=max_concurrency, backoff=backoff, name=name)

    def on_next(self, item: Any) -> None:
        env = item if isinstance(item, Envelope) else None
        statement = env.value if env is not None else item
        target = statement[0] if isinstance(statement, tuple) else statement
        idempotent = self.idempotent if self.idempotent is not None else bool(getattr(target, "is_idempotent", False))
        self._begin()
        self.executor.submit(env, lambda: statement, self._ok, self._bad, key=order_key(self.order_by, item),
                             idempotent=idempotent)
