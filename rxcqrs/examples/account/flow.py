"""Ask the three balance services at once for each request and zip the answers (ParallelCallFlow)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from reactivex import Observable

from rxcqrs.either import Either
from rxcqrs.examples.account.server import KINDS
from rxcqrs.http import parallel_calls, typed_query
from rxcqrs.messages import Envelope

__all__ = ["GetAccountBalances", "balance_query", "all_balances"]


@dataclass(frozen=True)
class GetAccountBalances:
    id: int


def balance_query(base_url: str, kind: str) -> Callable[[GetAccountBalances], Either[Any, Any]]:
    path = f"/account/balances/{kind}/GetAccountBalances"
    return lambda request: typed_query(base_url, path, request, map_right=lambda body: tuple(body["balances"]))


def all_balances(base_url: str) -> Callable[[Observable[Envelope[GetAccountBalances]]], Observable[Envelope[Any]]]:
    """Envelope[GetAccountBalances] -> Envelope[Right((checking, mm, savings)) | Left(failures)]."""
    return parallel_calls(*(balance_query(base_url, kind) for kind in KINDS))
