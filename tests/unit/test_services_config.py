"""`rxcqrs services` refuses bad set-ups with clear errors (no servers needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rxcqrs.exceptions import ConfigError, JavaNotFoundError, MavenError
from rxcqrs.services import ServicesSettings
from rxcqrs.services.jars import fetch_jars
from rxcqrs.services.java import find_java17, find_java21


def test_ports_are_validated() -> None:
    with pytest.raises(ConfigError, match="kafka_port"):
        ServicesSettings.from_env({"RXCQRS_KAFKA_PORT": "ninety"})
    with pytest.raises(ConfigError, match="1..65535"):
        ServicesSettings(kafka_port=70000)
    with pytest.raises(ConfigError, match="must differ"):
        ServicesSettings(kafka_port=9042)


def test_a_java_that_is_not_17_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "java"
    fake.write_text('#!/bin/sh\necho \'openjdk version "25.0.1" 2025-10-21\' >&2\n')
    fake.chmod(0o755)
    with pytest.raises(JavaNotFoundError, match="Java 25"):
        find_java17(str(fake))
    with pytest.raises(JavaNotFoundError, match="not runnable"):
        find_java17(str(tmp_path / "missing"))


def test_the_registry_needs_java_21_and_says_what_it_found(tmp_path: Path) -> None:
    old = tmp_path / "java"
    old.write_text('#!/bin/sh\necho \'openjdk version "17.0.12" 2024-07-16\' >&2\n')
    old.chmod(0o755)
    with pytest.raises(JavaNotFoundError, match=r"Java 21 or newer; found: .*java \(Java 17\).*RXCQRS_REGISTRY_JAVA"):
        find_java21(str(old))
    new = tmp_path / "java25"
    new.write_text('#!/bin/sh\necho \'openjdk version "25.0.1" 2025-10-21\' >&2\n')
    new.chmod(0o755)
    assert find_java21(str(new)) == str(new)


def test_the_registry_is_started_only_when_asked_for() -> None:
    from rxcqrs.services import _servers

    settings = ServicesSettings(home=Path("/nonexistent-rxcqrs-home"))
    assert [s.name for s in _servers(None, settings)] == ["cassandra", "kafka"]
    assert [s.name for s in _servers(["all"], settings)] == ["cassandra", "kafka", "registry"]
    assert [s.name for s in _servers(["registry"], settings.with_(nodes=3))] == ["registry"]
    assert ServicesSettings.from_env({"RXCQRS_REGISTRY_PORT": "8095"}).registry_url == \
        "http://127.0.0.1:8095/apis/ccompat/v7"
    with pytest.raises(ConfigError, match="must differ"):
        ServicesSettings(registry_port=9092)
    with pytest.raises(ConfigError, match="registry_port"):
        ServicesSettings.from_env({"RXCQRS_REGISTRY_PORT": "x"})


def test_missing_maven_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MavenError, match="Maven"):
        fetch_jars("kafka", tmp_path / "jars")


def test_cli_reports_errors_on_stderr_with_exit_code_1(tmp_path: Path) -> None:
    env = {**os.environ, "RXCQRS_HOME": str(tmp_path), "RXCQRS_JAVA": str(tmp_path / "nojava"),
           "RXCQRS_KAFKA_PORT": "1", "RXCQRS_KAFKA_CONTROLLER_PORT": "2"}
    out = subprocess.run([sys.executable, "-m", "rxcqrs.cli", "services", "up", "kafka"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 1
    assert out.stderr.startswith("rxcqrs: error:") and "JDK 17" in out.stderr or "in use" in out.stderr


def test_a_cluster_puts_node_n_on_127_0_0_n_with_the_same_ports() -> None:
    settings = ServicesSettings.from_env({"RXCQRS_NODES": "3", "RXCQRS_KAFKA_PORT": "19092"})
    assert settings.hosts == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert settings.kafka_bootstrap == "127.0.0.1:19092,127.0.0.2:19092,127.0.0.3:19092"
    assert settings.contact_points == "127.0.0.1:9042,127.0.0.2:9042,127.0.0.3:9042"
    assert ServicesSettings().kafka_bootstrap == "127.0.0.1:9092"  # a single server is unchanged


@pytest.mark.parametrize("nodes", ["0", "three", 12])
def test_a_bad_node_count_is_named(nodes: object) -> None:
    with pytest.raises(ConfigError, match=r"nodes \(--nodes, RXCQRS_NODES\) must be a whole number from 1 to 9"):
        ServicesSettings(nodes=nodes)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="RXCQRS_NODES"):
        ServicesSettings.from_env({"RXCQRS_NODES": str(nodes)})


def test_a_cluster_needs_loopback_addresses() -> None:
    with pytest.raises(ConfigError, match="loopback"):
        ServicesSettings(nodes=3, host="127.255.255.254")
    with pytest.raises(ConfigError, match="JMX"):
        ServicesSettings(nodes=3, cassandra_jmx_port=6999, cassandra_storage_port=7000)


def test_cluster_configs_name_every_voter_seed_and_replication(tmp_path: Path) -> None:
    from rxcqrs.services.servers import CassandraServer, KafkaServer

    settings = ServicesSettings(home=tmp_path, nodes=3, kafka_controller_port=19093)
    kafka = KafkaServer(settings, 2)
    (tmp_path / "kafka-cluster.id").write_text("already-formatted\n")
    kafka.make_dirs()
    (kafka.data / "meta.properties").write_text("")  # formatted: prepare writes configs only
    kafka.prepare("java", tmp_path)
    props = (kafka.conf / "server.properties").read_text()
    assert "node.id=2\n" in props and "listeners=PLAINTEXT://127.0.0.2:9092,CONTROLLER://127.0.0.2:19093" in props
    assert "controller.quorum.voters=1@127.0.0.1:19093,2@127.0.0.2:19093,3@127.0.0.3:19093" in props
    assert "default.replication.factor=3" in props and "min.insync.replicas=2" in props
    assert "offsets.topic.replication.factor=3" in props
    assert kafka.dir == tmp_path / "kafka-2" and kafka.address == "127.0.0.2:9092"

    cassandra = CassandraServer(settings, 3)
    cassandra.prepare("java", tmp_path)
    yaml = (cassandra.conf / "cassandra.yaml").read_text()
    assert 'seeds: "127.0.0.1:7000"' in yaml and "listen_address: 127.0.0.3" in yaml
    assert cassandra.ports["cassandra_jmx_port"] == 7201  # JMX binds 127.0.0.1 only: one port per node
    assert "-Dcassandra.jmx.local.port=7201" in cassandra.command("java", tmp_path)

    single = KafkaServer(ServicesSettings(home=tmp_path / "one"))
    assert single.dir == tmp_path / "one" / "kafka" and single.label == "kafka"


def test_services_nodes_flag_is_checked(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "rxcqrs.cli", "services", "up", "--nodes", "ten"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "RXCQRS_HOME": str(tmp_path)})
    assert out.returncode == 2 and "--nodes: a node count from 1 to 9, got 'ten'" in out.stderr


def test_a_failed_start_shows_the_exception_not_only_the_shutdown_after_it(tmp_path: Path) -> None:
    from rxcqrs.services.process import log_excerpt

    log = tmp_path / "server.out"
    cause = ["ERROR Exception encountered during startup", "java.lang.IllegalStateException: Other bootstrapping "
             "nodes detected", "\tat org.apache.cassandra.service.StorageService.joinTokenRing"]
    log.write_text("\n".join(["INFO starting"] * 50 + cause + ["INFO Enqueuing flush"] * 300) + "\n")
    excerpt = log_excerpt(log, "Exception encountered during startup", lines=3)
    assert excerpt.splitlines() == cause
    assert log_excerpt(log, "not in the log") == ""
    assert log_excerpt(tmp_path / "missing.out", "anything") == ""


def test_a_node_that_fails_to_join_is_started_again_a_bounded_number_of_times(monkeypatch: pytest.MonkeyPatch
                                                                              ) -> None:
    import types

    import rxcqrs.services as services
    from rxcqrs.exceptions import ServiceStartError

    calls: list[int] = []

    def failing_twice(server: object, settings: object, say: object) -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ServiceStartError("cassandra-2 failed during start-up ('Unable to contact any seeds')\nlog tail")
        return "up"

    monkeypatch.setattr(services, "_up_one", failing_twice)
    node = types.SimpleNamespace(label="cassandra-2", node=2)
    said: list[str] = []
    assert services._join(node, None, said.append) == "up"  # type: ignore[arg-type]
    assert len(calls) == 3 and len(said) == 2 and "Unable to contact any seeds" in said[0]

    calls.clear()
    monkeypatch.setattr(services, "JOIN_ATTEMPTS", 2)
    with pytest.raises(ServiceStartError):
        services._join(node, None, said.append)  # type: ignore[arg-type]
    assert len(calls) == 2
