"""HTTP stages: a typed GET per envelope, and parallel calls zipped into one answer (ParallelCallFlow)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from reactivex import Observable

from rxcqrs.either import Either, Left, Right
from rxcqrs.http.client import typed_query
from rxcqrs.messages import Envelope
from rxcqrs.operators._map_async import map_async_

__all__ = ["typed_query_flow", "parallel_calls", "zip_either"]


def typed_query_flow(base_url: str, path: str, *, map_right: Callable[[Any], Any] = lambda v: v,
                     map_left: Callable[[str], Any] = lambda t: t, max_concurrency: int = 4, timeout: float = 10.0
                     ) -> Callable[[Observable[Envelope[Any]]], Observable[Envelope[Either[Any, Any]]]]:
    """Envelope[request dataclass] -> Envelope[Left | Right], in input order."""
    return map_async_(lambda request: typed_query(base_url, path, request, map_right=map_right, map_left=map_left,
                                                  timeout=timeout), max_concurrency, "typed_query")


def zip_either(results: Sequence[Either[Any, Any]]) -> Either[Any, Any]:
    """Right(tuple of values) if every call answered Right, else Left(tuple of the Left values)."""
    lefts = tuple(r.value for r in results if isinstance(r, Left))
    return Left(lefts) if lefts else Right(tuple(r.value for r in results))


def parallel_calls(*calls: Callable[[Any], Either[Any, Any]],
                   combine: Callable[[Sequence[Either[Any, Any]]], Any] = zip_either, max_concurrency: int = 4
                   ) -> Callable[[Observable[Envelope[Any]]], Observable[Envelope[Any]]]:
    """Run every call on the same request at once and combine their answers, in input order (a broadcast
    to N calls, their answers zipped)."""
    fan_out = ThreadPoolExecutor(len(calls) * max_concurrency, thread_name_prefix="rxcqrs-parallel-calls")

    def all_of(request: Any) -> Any:
        futures = [fan_out.submit(call, request) for call in calls]
        return combine([f.result() for f in futures])

    return map_async_(all_of, max_concurrency, "parallel_calls")
