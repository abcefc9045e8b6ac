"""CassandraQuery: a statement's rows as an observable, one page at a time, fetched only on demand.

The rows of the current page are emitted one by one on the query's own thread; the next page is fetched
only after every row of this one was emitted, and (with ``demand="manual"``) only when downstream asked
for more rows. So at most one page is ever held, however large the table, and the stage completes only
after the last page.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import Disposable

from rxcqrs.exceptions import FlowError, StageError
from rxcqrs.metrics import Metrics

__all__ = ["CassandraQuery"]


class CassandraQuery:
    def __init__(self, session: Any, statement: Any, params: Any = None, *, fetch_size: int = 1000,
                 demand: Literal["auto", "manual"] = "auto") -> None:
        from cassandra.query import SimpleStatement

        if isinstance(statement, str):
            statement = SimpleStatement(statement)
        statement.fetch_size = fetch_size
        self.session = session
        self.statement = statement
        self.params = params
        self.fetch_size = fetch_size
        self._manual = demand == "manual"
        self._demand = 0
        self._cond = threading.Condition()
        self._cancelled = False
        self._subscribed = False
        self.metrics = Metrics()
        self.max_held = 0  # the most rows ever fetched but not yet emitted
        self.done = threading.Event()
        self.observable: Observable[Any] = reactivex.create(self._subscribe)

    def request(self, n: int) -> None:
        with self._cond:
            self._demand += n
            self._cond.notify_all()

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def _subscribe(self, observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None = None
                   ) -> abc.DisposableBase:
        with self._cond:
            if self._subscribed:
                observer.on_error(FlowError("a CassandraQuery can be subscribed once"))
                return Disposable()
            self._subscribed = True
        threading.Thread(target=self._run, args=(observer,), name="rxcqrs-query", daemon=True).start()
        return Disposable(self.cancel)

    def _take(self) -> bool:
        """Wait for demand (manual mode); False if cancelled."""
        with self._cond:
            if self._manual:
                self._cond.wait_for(lambda: self._demand > 0 or self._cancelled)
                if not self._cancelled:
                    self._demand -= 1
            return not self._cancelled

    def _run(self, observer: abc.ObserverBase[Any]) -> None:
        try:
            if self._manual:
                with self._cond:  # not even the first page before somebody asked for a row
                    self._cond.wait_for(lambda: self._demand > 0 or self._cancelled)
            result = self.session.execute(self.statement, self.params)
            while not self._cancelled:
                self.metrics.incr("pages")
                page = result.current_rows
                for i, row in enumerate(page):
                    self.max_held = max(self.max_held, len(page) - i)
                    if not self._take():
                        return
                    observer.on_next(row)
                    self.metrics.incr("rows")
                if not result.has_more_pages:
                    break
                result.fetch_next_page()
        except Exception as exc:
            query = getattr(self.statement, "query_string", self.statement)
            error = StageError(f"query {query!r} failed: {exc!r}")
            error.__cause__ = exc
            observer.on_error(error)
            return
        finally:
            self.done.set()
        observer.on_completed()
