"""Serial reads take the session's serial consistency, on a statement of their own."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from cassandra import ConsistencyLevel

from rxcqrs.cassandra.schema import prepare, prepare_serial, serial_consistency


class _Session:
    """Enough of a driver session: a default profile and ``prepare`` making a new statement per call."""

    def __init__(self, serial: Any) -> None:
        self.cluster = SimpleNamespace(profile_manager=SimpleNamespace(default=SimpleNamespace(
            serial_consistency_level=serial)))
        self.prepared = 0

    def prepare(self, query: str) -> Any:
        self.prepared += 1
        return SimpleNamespace(query_string=query, consistency_level=None)


def test_the_serial_consistency_is_the_default_profiles() -> None:
    assert serial_consistency(_Session(ConsistencyLevel.LOCAL_SERIAL)) == ConsistencyLevel.LOCAL_SERIAL


def test_a_profile_without_one_reads_at_serial() -> None:
    assert serial_consistency(_Session(None)) == ConsistencyLevel.SERIAL


def test_a_serial_read_is_never_the_shared_statement() -> None:
    session = _Session(ConsistencyLevel.LOCAL_SERIAL)
    query = "SELECT epoch FROM ks.fences WHERE consumer_group = ? AND topic = ?"
    shared = prepare(session, query)
    serial = prepare_serial(session, query)
    assert serial is not shared and session.prepared == 2
    assert serial.consistency_level == ConsistencyLevel.LOCAL_SERIAL
    assert shared.consistency_level is None  # the other readers' statement keeps the session's default
