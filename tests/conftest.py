"""The project's own tests use the fixtures of its pytest plugin (rxcqrs.testing.pytest_plugin), under the
names they always had."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest


@pytest.fixture(scope="session")
def services_settings(rxcqrs_services_settings: Any) -> Any:
    return rxcqrs_services_settings


@pytest.fixture(scope="session")
def servers(rxcqrs_servers: Any) -> Any:
    return rxcqrs_servers


@pytest.fixture(scope="session")
def kafka_bootstrap(rxcqrs_bootstrap: str) -> str:
    return rxcqrs_bootstrap


@pytest.fixture
def topic_factory(rxcqrs_topic: Callable[..., str]) -> Callable[..., str]:
    return rxcqrs_topic


@pytest.fixture
def group_id(rxcqrs_group: str) -> str:
    return rxcqrs_group


@pytest.fixture(scope="session")
def cassandra_session(rxcqrs_session: Any) -> Iterator[Any]:
    yield rxcqrs_session


@pytest.fixture
def keyspace(rxcqrs_keyspace: str) -> str:
    return rxcqrs_keyspace
