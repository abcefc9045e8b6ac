"""`rxcqrs services` on a second, private instance (own home and ports, shared jar cache):
up, status, idempotent up, port taken, down, up again, down --wipe."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from rxcqrs import services
from rxcqrs.exceptions import PortInUseError
from rxcqrs.services import ServicesSettings
from tests.helpers import free_ports


def cli(settings: ServicesSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"RXCQRS_HOME": str(settings.home), "RXCQRS_JARS": str(settings.jar_cache),
           "RXCQRS_KAFKA_PORT": str(settings.kafka_port),
           "RXCQRS_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port),
           "RXCQRS_CASSANDRA_PORT": str(settings.cassandra_port),
           "RXCQRS_CASSANDRA_STORAGE_PORT": str(settings.cassandra_storage_port),
           "RXCQRS_CASSANDRA_JMX_PORT": str(settings.cassandra_jmx_port)}
    import os
    return subprocess.run([sys.executable, "-m", "rxcqrs.cli", "services", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)


@pytest.mark.services
def test_up_status_idempotent_port_taken_down_up_again(tmp_path, services_settings) -> None:  # type: ignore[no-untyped-def]
    k, kc, c, cs, cj = free_ports(5)
    settings = ServicesSettings(home=tmp_path / "home", jars=services_settings.jar_cache, kafka_port=k,
                                kafka_controller_port=kc, cassandra_port=c, cassandra_storage_port=cs,
                                cassandra_jmx_port=cj)
    try:
        up = cli(settings, "up")
        assert up.returncode == 0, up.stderr + up.stdout
        status = cli(settings, "status")
        assert status.returncode == 0, status.stdout
        assert "kafka     running" in status.stdout and "version 4." in status.stdout
        assert "cassandra running" in status.stdout and "version 5.0." in status.stdout
        pids = {s.name: s.pid for s in services.status(settings=settings)}

        again = cli(settings, "up")  # idempotent: reuses both, same PIDs
        assert again.returncode == 0 and again.stdout.count("reused") == 2, again.stdout
        assert {s.name: s.pid for s in services.status(settings=settings)} == pids

        down = cli(settings, "down", "kafka")
        assert down.returncode == 0
        assert [s.running for s in services.status(["kafka"], settings)] == [False]
        with socket.socket() as squatter:  # something else takes Kafka's port meanwhile
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", k))
            squatter.listen()
            taken = cli(settings, "up", "kafka")
            assert taken.returncode == 1
            assert f"{k} (kafka_port) already in use" in taken.stderr and "RXCQRS_KAFKA_PORT" in taken.stderr
            with pytest.raises(PortInUseError):
                services.up(["kafka"], settings)
        back = cli(settings, "up", "kafka")
        assert back.returncode == 0 and "started" in back.stdout, back.stdout + back.stderr
        assert [s.healthy for s in services.status(settings=settings)] == [True, True]
    finally:
        wiped = cli(settings, "down", "--wipe")
    assert wiped.returncode == 0
    assert not any(s.running for s in services.status(settings=settings))
    assert not (settings.home / "kafka" / "data").exists()


@pytest.mark.services
def test_a_start_up_timeout_fails_with_the_log_tail_and_leaves_nothing_running(tmp_path, services_settings) -> None:  # type: ignore[no-untyped-def]
    from rxcqrs.exceptions import ServiceStartError

    k, kc = free_ports(2)
    settings = ServicesSettings(home=tmp_path / "home", jars=services_settings.jar_cache, kafka_port=k,
                                kafka_controller_port=kc, kafka_start_timeout=0.5)
    with pytest.raises(ServiceStartError, match="not ready after") as info:
        services.up(["kafka"], settings)
    message = str(info.value)
    assert "not ready after 0.5s" in message and "server.out" in message
    assert "==== rxcqrs start" in message  # the tail of the server's own log follows
    assert [s.running for s in services.status(["kafka"], settings)] == [False]
