"""Wrong configuration and unreachable servers: clear errors, nothing lost (no servers needed)."""

from __future__ import annotations

import socket

import pytest

from rxcqrs import run
from rxcqrs.backoff import Backoff
from rxcqrs.exceptions import ConfigError, DeliveryError, FlowError
from rxcqrs.kafka import ConsumerSettings, KafkaSink, KafkaSource, ProducerSettings, SourceSettings
from tests.helpers import Collect


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("bad", ["localhost", "host:port", "h:0", "h:70000", ""])
def test_bootstrap_servers_must_be_host_port(bad: str) -> None:
    with pytest.raises(ConfigError, match="host:port"):
        ConsumerSettings(group_id="g", bootstrap_servers=bad)
    with pytest.raises(ConfigError):
        ProducerSettings(bootstrap_servers=bad)


def test_consumer_settings_refuse_what_would_break_the_contract() -> None:
    with pytest.raises(ConfigError, match="group_id"):
        ConsumerSettings(group_id="")
    with pytest.raises(ConfigError, match="managed by rxcqrs"):
        ConsumerSettings(group_id="g", extra={"enable_auto_commit": True})
    with pytest.raises(ConfigError, match="heartbeat"):
        ConsumerSettings(group_id="g", session_timeout_ms=3000, heartbeat_interval_ms=2000)
    with pytest.raises(ConfigError):
        SourceSettings(max_in_flight=0)
    with pytest.raises(ConfigError, match="failure_policy"):
        SourceSettings(failure_policy="retry-forever")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Backoff(min_delay=5, max_delay=1)


def test_secrets_never_show_in_repr() -> None:
    settings = ConsumerSettings(group_id="g", extra={"sasl_plain_username": "app", "sasl_plain_password": "s3cret",
                                                     "ssl_password": "k3y"})
    text = repr(settings)
    assert "s3cret" not in text and "k3y" not in text and "app" in text and "***" in text
    assert "s3cret" not in repr(ProducerSettings(extra={"sasl_plain_password": "s3cret"}))


@pytest.mark.parametrize("backend", ["kafka-python", "confluent"])
def test_an_unreachable_broker_fails_the_flow_with_a_clear_error(backend: str) -> None:
    port = closed_port()
    source = KafkaSource("t", ConsumerSettings(group_id="g", bootstrap_servers=f"127.0.0.1:{port}",
                                               bootstrap_timeout_ms=200, backend=backend))  # type: ignore[arg-type]
    sink = Collect()
    flow = run(source, sink)
    with pytest.raises(FlowError, match=f"cannot create a Kafka consumer for 127.0.0.1:{port}"):
        flow.wait(30)
    assert sink.items == [] and sink.errors


@pytest.mark.parametrize("backend", ["kafka-python", "confluent"])
def test_an_unreachable_broker_for_a_sink_is_a_delivery_error(backend: str) -> None:
    port = closed_port()
    with pytest.raises(DeliveryError, match=f"cannot create a Kafka producer for 127.0.0.1:{port}"):
        KafkaSink("t", ProducerSettings(bootstrap_servers=f"127.0.0.1:{port}", bootstrap_timeout_ms=200,
                                        backend=backend))  # type: ignore[arg-type]
