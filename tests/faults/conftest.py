"""The fault suite's own Kafka + Cassandra pair (own home, own free ports, the shared jar cache), and what
every scenario needs: the consumer as a child process, real faults (SIGKILL, SIGSTOP, restart), and an
independent check of the end state.

Size: ``RXCQRS_FAULTS_COMMANDS`` (default 2,000 commands over ``RXCQRS_FAULTS_CARTS`` = 40 carts) keeps
``make test`` short; ``make faults`` runs 20,000 over 200.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from rxcqrs import services
from rxcqrs.services import ServicesSettings
from rxcqrs.services.process import ServerState, pid_alive
from tests.helpers import free_port_run, free_ports

COMMANDS = int(os.environ.get("RXCQRS_FAULTS_COMMANDS", "2000"))
CARTS = int(os.environ.get("RXCQRS_FAULTS_CARTS", "40"))
PARTITIONS = 8
FIGURES = Path(os.environ.get("RXCQRS_FAULTS_REPORT", "build/faults.json"))


class Servers:
    """The pair the faults are injected into; never the default ports."""

    def __init__(self, settings: ServicesSettings) -> None:
        self.settings = settings
        self.bootstrap = settings.kafka_bootstrap
        self.env = {**os.environ, "RXCQRS_HOME": str(settings.home), "RXCQRS_JARS": str(settings.jar_cache),
                    "RXCQRS_KAFKA_BOOTSTRAP": self.bootstrap, "RXCQRS_KAFKA_PORT": str(settings.kafka_port),
                    "RXCQRS_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port),
                    "RXCQRS_CASSANDRA_PORT": str(settings.cassandra_port),
                    "RXCQRS_CASSANDRA_STORAGE_PORT": str(settings.cassandra_storage_port),
                    "RXCQRS_CASSANDRA_JMX_PORT": str(settings.cassandra_jmx_port),
                    "RXCQRS_NODES": str(settings.nodes), "RXCQRS_CASSANDRA_HOSTS": ",".join(settings.hosts),
                    "PYTHONFAULTHANDLER": "1"}  # a consumer that crashes prints every thread's stack

    def pid(self, name: str) -> int:
        """``name``: a server (``kafka``) or a node of a cluster (``kafka-2``)."""
        state = ServerState.load(self.settings.home / name / "server.json")
        assert state is not None and state.is_running(), f"{name} is not running"
        return state.pid

    def signal(self, name: str, sig: int) -> None:
        os.killpg(self.pid(name), sig)

    def kill(self, name: str) -> None:
        pid = self.pid(name)
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while pid_alive(pid) and time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)  # pacing while the kernel reaps the process
        assert not pid_alive(pid), f"{name} survived SIGKILL"

    def start(self, name: str) -> None:
        """Start what is not running of ``name`` (``kafka``, ``cassandra``: every node of a cluster)."""
        services.up([name], self.settings)

    def session(self) -> Any:
        from rxcqrs.cassandra import CassandraSettings, connect

        return connect(CassandraSettings(contact_points=tuple(self.settings.hosts), port=self.settings.cassandra_port,
                                         request_timeout=20.0))


@pytest.fixture(scope="session")
def fault_servers(services_settings: ServicesSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    k, kc, c, cs, cj = free_ports(5)
    settings = ServicesSettings(home=tmp_path_factory.mktemp("faults") / "home", jars=services_settings.jar_cache,
                                kafka_port=k, kafka_controller_port=kc, cassandra_port=c, cassandra_storage_port=cs,
                                cassandra_jmx_port=cj, cassandra_heap="768m", kafka_heap="384m")
    services.up(settings=settings)
    try:
        yield Servers(settings)
    finally:
        services.down(settings=settings, wipe=True)


@pytest.fixture(scope="module")
def cluster_servers(services_settings: ServicesSettings, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[Servers]:
    """Three Kafka and three Cassandra nodes on 127.0.0.1-3 (replication 3), own home and ports; stopped after
    the module that uses them, so the rest of the suite does not share the cores with six idle servers."""
    hosts = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    k, kc, c, cs = free_ports(4, hosts)
    settings = ServicesSettings(home=tmp_path_factory.mktemp("cluster") / "home", jars=services_settings.jar_cache,
                                nodes=3, kafka_port=k, kafka_controller_port=kc, cassandra_port=c,
                                cassandra_storage_port=cs, cassandra_jmx_port=free_port_run(3, avoid=(k, kc, c, cs)),
                                cassandra_heap="512m", kafka_heap="256m")
    try:
        services.up(settings=settings)
        yield Servers(settings)
    finally:
        services.down(settings=settings, wipe=True)


@dataclass
class Consumer:
    """``rxcqrs cart consume`` as a child process of its own, its output kept."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, servers: Servers, topic: str, group: str, keyspace: str, *args: str,
              command: str = "consume") -> "Consumer":
        """``rxcqrs cart <command>`` (``consume`` of the commands ``topic``; ``project`` of the event stream
        ``topic``)."""
        where = ["--topic", topic] if command == "consume" else ["--events-topic", topic]
        proc = subprocess.Popen([sys.executable, "-m", "rxcqrs.examples.shoppingcart", command, *where,
                                 "--group", group, "--keyspace", keyspace, "--progress-every", "1", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=servers.env,
                                start_new_session=True)
        consumer = cls(proc)
        threading.Thread(target=consumer._pump, daemon=True).start()
        return consumer

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"the consumer did not end within {timeout:g}s:\n{self.output[-4000:]}") from None

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self) -> None:
        """SIGTERM: the consumer drains and exits (see :meth:`wait`)."""
        self.proc.send_signal(signal.SIGTERM)


@dataclass
class Figures:
    """What a scenario reports (also written to build/faults.json for the notes)."""

    scenario: str
    mode: str
    commands: int = 0
    carts_exact: str = ""
    duplicates: int = 0
    unknown_outcomes: int = 0
    compensations: int = 0
    dead_letters: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        FIGURES.parent.mkdir(parents=True, exist_ok=True)
        found = json.loads(FIGURES.read_text()) if FIGURES.exists() else []
        found = [f for f in found if (f["scenario"], f["mode"]) != (self.scenario, self.mode)]
        found.append(self.__dict__)
        FIGURES.write_text(json.dumps(found, indent=1, default=str))
        print(f"\nFIGURES {json.dumps(self.__dict__, default=str)}")


def names(prefix: str) -> tuple[str, str, str]:
    run_id = uuid.uuid4().hex[:8]
    return f"faults.{prefix}.{run_id}", f"faults.{prefix}.{run_id}", f"f_{prefix}_{run_id}"
