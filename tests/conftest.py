"""Session fixtures: the real servers (started if needed, never skipped), unique topics and keyspaces."""

from __future__ import annotations

import re
import uuid
from typing import Any, Callable, Iterator

import pytest

from rxcqrs.services import ServicesSettings


def _slug(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^a-zA-Z0-9]+", "_", request.node.name)[:30].strip("_").lower()
    return f"{name}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def services_settings() -> ServicesSettings:
    return ServicesSettings.from_env()


@pytest.fixture(scope="session")
def servers(services_settings: ServicesSettings) -> Any:
    """Kafka and Cassandra, up and answering. A failure to start is an error of every test that needs them."""
    from rxcqrs import services

    return services.up(settings=services_settings)


@pytest.fixture(scope="session")
def kafka_bootstrap(servers: Any, services_settings: ServicesSettings) -> str:
    return services_settings.kafka_bootstrap


@pytest.fixture
def topic_factory(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """Create uniquely named topics for this test; deleted afterwards."""
    from rxcqrs.kafka import create_topics, delete_topics

    made: list[str] = []

    def make(partitions: int = 1, suffix: str = "", configs: dict[str, str] | None = None) -> str:
        name = f"t.{_slug(request)}{suffix}"
        create_topics({name: partitions}, bootstrap_servers=kafka_bootstrap, configs=configs)
        made.append(name)
        return name

    yield make
    try:
        delete_topics(made + [m + ".dlq" for m in made], bootstrap_servers=kafka_bootstrap)
    except Exception:
        pass


@pytest.fixture
def group_id(request: pytest.FixtureRequest) -> str:
    return f"g.{_slug(request)}"


@pytest.fixture(scope="session")
def cassandra_session(servers: Any, services_settings: ServicesSettings) -> Iterator[Any]:
    from rxcqrs.cassandra import CassandraSettings, connect

    session = connect(CassandraSettings(contact_points=(services_settings.host,),
                                        port=services_settings.cassandra_port, protocol_version=5))
    yield session
    session.cluster.shutdown()


@pytest.fixture
def keyspace(cassandra_session: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh keyspace for this test (replication factor 1), dropped afterwards."""
    name = "ks_" + _slug(request)
    cassandra_session.execute(
        f"CREATE KEYSPACE {name} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    yield name
    cassandra_session.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=60)
