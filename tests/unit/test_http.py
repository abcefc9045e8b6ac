"""Typed HTTP stages against a real local HTTP server (the account example's BalancesServer)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pytest
import reactivex

from rxcqrs.acks import Ticket
from rxcqrs.either import Left, Right
from rxcqrs.examples.account.flow import GetAccountBalances, all_balances, balance_query
from rxcqrs.examples.account.server import BALANCES, BalancesServer
from rxcqrs.exceptions import ConfigError
from rxcqrs.http import HttpResponse, create_url, to_query, typed_query_flow, typed_response
from rxcqrs.messages import Envelope, RecordMetadata
from rxcqrs.operators import collect_right, flatten, route_either
from tests.helpers import Collect


def envelopes(values: list[Any], results: dict[int, Any]) -> list[Envelope[Any]]:
    return [Envelope(v, RecordMetadata("t", 0, i, 0), Ticket(lambda e, i=i: results.__setitem__(i, e)))
            for i, v in enumerate(values)]


def run_to_list(values: list[Any], *operators: Any) -> tuple[list[Any], dict[int, Any]]:
    results: dict[int, Any] = {}
    out: list[Any] = []
    done = threading.Event()
    reactivex.from_iterable(envelopes(values, results)).pipe(*operators).subscribe(
        out.append, on_completed=done.set)
    assert done.wait(30)
    return out, results


def test_urls_and_queries_are_validated() -> None:
    assert create_url("http", "localhost", 9000, "/account/balances") == "http://localhost:9000/account/balances"
    assert create_url("https", "10.0.0.1", 65535) == "https://10.0.0.1:65535/"
    for bad in (("ftp", "h", 1, "/"), ("http", "bad host", 1, "/"), ("http", "h", 65536, "/"),
                ("http", "h", -1, "/"), ("http", "h", 1, "/a?b")):
        with pytest.raises(ConfigError):
            create_url(*bad)

    @dataclass
    class Query:
        id: int
        name: str

    assert to_query("/q", Query(7, "a b&c")) == "/q?id=7&name=a+b%26c"
    with pytest.raises(ConfigError):
        to_query("/q", {"id": 1})


def test_responses_become_rights_and_lefts_never_exceptions() -> None:
    assert typed_response(HttpResponse(200, "application/json", '{"a": 1}')) == Right({"a": 1})
    assert typed_response(HttpResponse(200, "text/plain", "no content")) == Left("no content")
    assert typed_response(HttpResponse(200, "text/html", "<p>")).value.startswith("FAIL unsupported content type")
    assert typed_response(HttpResponse(400, "text/plain", "bad id")) == Left("FAIL bad request: bad id")
    assert typed_response(HttpResponse(503, "text/plain", "busy")) == Left("FAIL 503 busy")


def test_typed_queries_in_order_against_the_balances_server() -> None:
    with BalancesServer() as server:
        query = balance_query(server.base_url, "checking")
        assert query(GetAccountBalances(2)) == Right((2000.2, 2222.2))
        assert query(GetAccountBalances(9)) == Left("FAIL bad request: unknown account id '9'")
        out, results = run_to_list([GetAccountBalances(i) for i in (3, 1, 9, 2)],
                                   typed_query_flow(server.base_url, "/account/balances/mm/GetAccountBalances",
                                                    map_right=lambda b: b["balances"], max_concurrency=3))
    assert [e.value for e in out] == [Right(BALANCES["mm"][3]), Right(BALANCES["mm"][1]),
                                      Left("FAIL bad request: unknown account id '9'"), Right(BALANCES["mm"][2])]
    assert results == {}  # the flow passes envelopes on: whatever comes next settles them


def test_an_unreachable_service_is_a_left() -> None:
    with BalancesServer() as server:
        url = server.base_url
    assert balance_query(url, "checking")(GetAccountBalances(1)).value.startswith("FAIL ")


def test_parallel_calls_zip_three_answers_and_rights_lefts_route() -> None:
    with BalancesServer() as server:
        out, _ = run_to_list([GetAccountBalances(1), GetAccountBalances(4), GetAccountBalances(2)],
                             all_balances(server.base_url))
    assert out[0].value == Right(tuple(tuple(BALANCES[k][1]) for k in ("checking", "mm", "savings")))
    assert isinstance(out[1].value, Left) and len(out[1].value.value) == 3
    assert out[2].value.value[2] == tuple(BALANCES["savings"][2])
    lefts, rights = Collect(), Collect()
    reactivex.from_iterable(out).pipe(route_either(lefts, rights)).subscribe()
    assert len(lefts.items) == 1 and len(rights.items) == 2


def test_collect_right_acks_lefts_and_flatten_settles_the_record_once_every_element_did() -> None:
    out, results = run_to_list([Right(1), Left("no"), Right(3)], collect_right())
    assert [e.value for e in out] == [1, 3] and results == {1: None}
    out, results = run_to_list([[1, 2, 3], []], flatten())
    assert [e.value for e in out] == [1, 2, 3] and results == {1: None}
    for env in out[:2]:
        env.ack()
    assert 0 not in results
    out[2].ack()
    assert results[0] is None
