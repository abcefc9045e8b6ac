"""A pytest plugin (entry point ``pytest11``): test your own flows the way rxcqrs tests its own.

Fixtures:

* ``rxcqrs_servers`` (session): the local Kafka and Cassandra, started if needed (``rxcqrs services up``)
  and never skipped: a failure to start is an error of every test that needs them;
* ``rxcqrs_bootstrap`` (session): their Kafka bootstrap servers;
* ``rxcqrs_registry`` (session): the schema registry's Confluent-compatible URL, started if needed
  (``rxcqrs services up registry``; Java 21+), only for the tests that ask for it;
* ``rxcqrs_topic``: a factory of uniquely named topics (``rxcqrs_topic(partitions=4)``), deleted afterwards
  with their ``.dlq``;
* ``rxcqrs_group``: a unique consumer group id;
* ``rxcqrs_session`` (session): a Cassandra session; ``rxcqrs_keyspace``: a fresh keyspace, dropped afterwards;
* ``fake_broker`` / ``fake_session``: the in-memory Kafka broker and Cassandra session, for the fast tier
  (sources: ``client_factory=fake_consumers(fake_broker)``, sinks: ``KafkaSink(topic, fake_producer(...))``).

The servers' ports and home follow ``RXCQRS_*`` like the command line (:mod:`rxcqrs.services.settings`).
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Callable, Iterator

import pytest


def _slug(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^a-zA-Z0-9]+", "_", request.node.name)[:30].strip("_").lower()
    return f"{name}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def rxcqrs_services_settings() -> Any:
    from rxcqrs.services import ServicesSettings

    return ServicesSettings.from_env()


@pytest.fixture(scope="session")
def rxcqrs_servers(rxcqrs_services_settings: Any) -> Any:
    """Kafka and Cassandra, up and answering (started if needed)."""
    from rxcqrs import services

    return services.up(settings=rxcqrs_services_settings)


@pytest.fixture(scope="session")
def rxcqrs_registry(rxcqrs_services_settings: Any) -> str:
    """The schema registry, up and answering (started if needed): its ``/apis/ccompat/v7`` URL."""
    from rxcqrs import services

    services.up(["registry"], settings=rxcqrs_services_settings)
    return str(rxcqrs_services_settings.registry_url)


@pytest.fixture(scope="session")
def rxcqrs_bootstrap(rxcqrs_servers: Any, rxcqrs_services_settings: Any) -> str:
    return str(rxcqrs_services_settings.kafka_bootstrap)


@pytest.fixture
def rxcqrs_topic(rxcqrs_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """``make(partitions=1, suffix="", configs=None)`` creates a uniquely named topic for this test."""
    from rxcqrs.kafka import create_topics, delete_topics

    made: list[str] = []

    def make(partitions: int = 1, suffix: str = "", configs: dict[str, str] | None = None) -> str:
        name = f"t.{_slug(request)}{suffix}"
        create_topics({name: partitions}, bootstrap_servers=rxcqrs_bootstrap, configs=configs)
        made.append(name)
        return name

    yield make
    try:
        delete_topics(made + [m + ".dlq" for m in made], bootstrap_servers=rxcqrs_bootstrap)
    except Exception:  # a topic that was never created (or already deleted) is not the test's failure
        pass


@pytest.fixture
def rxcqrs_group(request: pytest.FixtureRequest) -> str:
    return f"g.{_slug(request)}"


@pytest.fixture(scope="session")
def rxcqrs_session(rxcqrs_servers: Any, rxcqrs_services_settings: Any) -> Iterator[Any]:
    from rxcqrs.cassandra import CassandraSettings, connect

    session = connect(CassandraSettings(contact_points=(rxcqrs_services_settings.host,),
                                        port=rxcqrs_services_settings.cassandra_port))
    yield session
    session.cluster.shutdown()


@pytest.fixture
def rxcqrs_keyspace(rxcqrs_session: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh keyspace (replication factor 1), dropped afterwards."""
    name = "ks_" + _slug(request)
    rxcqrs_session.execute(
        f"CREATE KEYSPACE {name} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    yield name
    rxcqrs_session.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=60)


@pytest.fixture
def fake_broker() -> Any:
    from rxcqrs.testing import FakeBroker

    return FakeBroker()


@pytest.fixture
def fake_session() -> Iterator[Any]:
    from rxcqrs.testing.fake_cassandra import FakeSession

    session = FakeSession()
    yield session
    session.shutdown()
