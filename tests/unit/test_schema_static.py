"""``create_table(static=...)``: the DDL of static columns, and each misuse refused with one line before any
statement is sent."""

from __future__ import annotations

from typing import Any

import pytest

from rxcqrs.cassandra.schema import create_table
from rxcqrs.exceptions import ConfigError


class Recorder:
    def __init__(self) -> None:
        self.statements: list[str] = []

    def execute(self, statement: str, **_kwargs: Any) -> None:
        self.statements.append(statement)


COLUMNS = {"p": "int", "c": "text", "owner": "bigint", "v": "int"}


def test_static_columns_are_declared_static() -> None:
    session = Recorder()
    create_table(session, "ks", "t", COLUMNS, ["p"], [("c", "ASC")], static=["owner"])
    (ddl,) = session.statements
    assert "owner bigint static" in ddl and "v int," in ddl and " static" not in ddl.replace("owner bigint static", "")


@pytest.mark.parametrize("clustering, static, message", [
    ([], ["owner"], "static columns need clustering columns"),
    ([("c", "ASC")], ["missing"], "must be columns outside the primary key"),
    ([("c", "ASC")], ["c"], "must be columns outside the primary key"),
    ([("c", "ASC")], ["p"], "must be columns outside the primary key"),
])
def test_misused_static_columns_are_refused(clustering: Any, static: list[str], message: str) -> None:
    session = Recorder()
    with pytest.raises(ConfigError, match=message):
        create_table(session, "ks", "t", COLUMNS, ["p"], clustering, static=static)
    assert session.statements == []
