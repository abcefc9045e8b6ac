"""How to configure, launch and probe each server: Apache Kafka 4.x (KRaft), Apache Cassandra 5.0 and the schema
registry (Apicurio Registry 3, in-memory storage, its Confluent-compatible API under ``/apis/ccompat/v7``)."""

from __future__ import annotations

import base64
import re
import string
import subprocess
import uuid
from abc import ABC, abstractmethod
from importlib import resources
from pathlib import Path

from rxcqrs.exceptions import ServiceStartError
from rxcqrs.services.settings import ServicesSettings

__all__ = ["Server", "KafkaServer", "CassandraServer", "RegistryServer", "SERVERS"]


def render(template: str, **values: object) -> str:
    text = (resources.files("rxcqrs.services") / "templates" / template).read_text()
    return string.Template(text).substitute({k: str(v) for k, v in values.items()})


class Server(ABC):
    """One server kind: its directories under the home, its ports, its command line and its probe."""

    name: str
    fatal_lines: tuple[str, ...] = ()

    def __init__(self, settings: ServicesSettings, node: int = 0) -> None:
        self.settings = settings
        #: 0: the single server (``<home>/<kind>``); n >= 1: cluster node n (``<home>/<kind>-<n>``, 127.0.0.n)
        self.node = node
        self.label = self.name if node == 0 else f"{self.name}-{node}"
        self.host = settings.node_host(node)
        self.dir = settings.home / self.label
        self.conf = self.dir / "conf"
        self.data = self.dir / "data"
        self.logs = self.dir / "logs"
        self.tmp = self.dir / "tmp"
        self.log = self.logs / "server.out"
        self.state_file = self.dir / "server.json"

    @property
    @abstractmethod
    def ports(self) -> dict[str, int]:
        """Name (as in ``ServicesSettings``) -> port, for every port the server binds."""

    @property
    def start_timeout(self) -> float:
        return float(getattr(self.settings, f"{self.name}_start_timeout"))

    @property
    def marker(self) -> str:
        """A path on the command line that identifies this instance (its conf directory)."""
        return str(self.conf)

    @property
    def version(self) -> str:
        """The pinned version that :meth:`fetch` gets."""
        from rxcqrs.services.jars import pinned_version

        return pinned_version(self.name)

    def find_java(self) -> str:
        """The ``java`` binary to run it with (a JDK 17 for Kafka and Cassandra)."""
        from rxcqrs.services.java import find_java17

        return find_java17(self.settings.java)

    def fetch(self) -> Path:
        """Its jars from Maven Central (once per pinned version, then from the jar cache)."""
        from rxcqrs.services.jars import fetch_jars

        return fetch_jars(self.name, self.settings.jar_cache)

    @abstractmethod
    def prepare(self, java: str, lib: Path) -> None:
        """Write configs (and format storage) before a start."""

    @abstractmethod
    def command(self, java: str, lib: Path) -> list[str]:
        """The JVM command line."""

    @abstractmethod
    def probe(self) -> str:
        """Make a real client request; return the version the server reports. Raises until ready."""

    def probe_cluster(self, nodes: int | None = None) -> str:
        """Like :meth:`probe`, and on a cluster also nodes 1..``nodes`` (default: all) as this node sees them."""
        return self.probe()

    def make_dirs(self) -> None:
        for path in (self.conf, self.data, self.logs, self.tmp):
            path.mkdir(parents=True, exist_ok=True)


class KafkaServer(Server):
    name = "kafka"
    fatal_lines = ("Exiting Kafka due to fatal exception", "Exiting Kafka.")

    @property
    def ports(self) -> dict[str, int]:
        return {"kafka_port": self.settings.kafka_port, "kafka_controller_port": self.settings.kafka_controller_port}

    @property
    def address(self) -> str:
        return f"{self.host}:{self.settings.kafka_port}"

    def _jvm_opts(self) -> list[str]:
        heap = self.settings.kafka_heap
        return [f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
                "-XX:MaxInlineLevel=15", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
                f"-Djava.io.tmpdir={self.tmp}", f"-Dkafka.logs.dir={self.logs}",
                f"-Dlog4j2.configurationFile={self.conf / 'log4j2.properties'}"]

    def prepare(self, java: str, lib: Path) -> None:
        self.make_dirs()
        s = self.settings
        members = s.node_numbers
        voters = ",".join(f"{max(n, 1)}@{s.node_host(n)}:{s.kafka_controller_port}" for n in members)
        replicas = min(len(members), 3)
        (self.conf / "server.properties").write_text(render(
            "kafka-server.properties", host=self.host, port=s.kafka_port, controller_port=s.kafka_controller_port,
            data_dir=self.data, node_id=max(self.node, 1), voters=voters, replicas=replicas,
            min_isr=max(1, replicas - 1)))
        (self.conf / "log4j2.properties").write_text(render("kafka-log4j2.properties"))
        if not (self.data / "meta.properties").exists():
            cluster_id = _cluster_id() if self.node == 0 else _shared_cluster_id(s.home / "kafka-cluster.id")
            cmd = [java, *self._jvm_opts(), "-cp", f"{lib}/*", "kafka.tools.StorageTool", "format",
                   "-t", cluster_id, "-c", str(self.conf / "server.properties"), "--ignore-formatted"]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.dir)
            with open(self.log, "a") as out:
                out.write(f"==== storage format (cluster id {cluster_id}) exit {proc.returncode}\n"
                          f"{proc.stdout}{proc.stderr}\n")
            if proc.returncode != 0:
                raise ServiceStartError(f"kafka storage format failed (exit {proc.returncode}):\n"
                                        f"{(proc.stdout + proc.stderr)[-3000:]}")

    def command(self, java: str, lib: Path) -> list[str]:
        return [java, *self._jvm_opts(), "-cp", f"{lib}/*", "kafka.Kafka", str(self.conf / "server.properties")]

    def probe(self) -> str:
        # imported here so `rxcqrs services` works before kafka-python is importable (clear error)
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.address, bootstrap_timeout_ms=3000,
                                 request_timeout_ms=5000, client_id="rxcqrs-services-probe")
        try:
            admin.describe_cluster()
            features = admin.describe_features()
        finally:
            admin.close()
        return _kafka_version(self.log, features)


def _cluster_id() -> str:
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _shared_cluster_id(path: Path) -> str:
    """One id for every node of a cluster: the first node to format writes it, the others read it."""
    from rxcqrs.services.jars import file_lock

    with file_lock(path.with_suffix(".lock")):
        if path.exists():
            return path.read_text().strip()
        cid = _cluster_id()
        path.write_text(cid + "\n")
        return cid


def _kafka_version(log: Path, features: object) -> str:
    """The broker's own version: its AppInfo log line of this run, plus the finalized metadata.version."""
    version = "unknown"
    try:
        text = log.read_text(errors="replace")
        starts = text.rfind("==== rxcqrs start")
        found = re.findall(r"Kafka version: (\S+)", text[max(starts, 0):])
        if found:
            version = found[-1]
    except OSError:
        pass
    metadata = _metadata_version(features)
    return f"{version} (metadata.version {metadata})" if metadata else version


def _metadata_version(features: object) -> str | None:
    """kafka-python 3 returns ``{'metadata.version': {'finalized': (lo, hi), ...}, ...}``."""
    if not isinstance(features, dict):
        return None
    finalized = (features.get("metadata.version") or {}).get("finalized")
    return None if not finalized else f"level {finalized[-1]}"


class CassandraServer(Server):
    name = "cassandra"
    fatal_lines = ("encountered during startup", "Exception encountered during startup")

    _JPMS_EXPORTS = ("java.base/jdk.internal.misc", "java.management.rmi/com.sun.jmx.remote.internal.rmi",
                     "java.management/com.sun.jmx.remote.security", "java.rmi/sun.rmi.registry",
                     "java.rmi/sun.rmi.server", "java.sql/java.sql", "java.base/java.lang.ref",
                     "jdk.unsupported/sun.misc", "jdk.compiler/com.sun.tools.javac.file",
                     "jdk.attach/sun.tools.attach")
    _JPMS_OPENS = ("java.base/java.lang.module", "java.base/jdk.internal.loader", "java.base/jdk.internal.ref",
                   "java.base/jdk.internal.reflect", "java.base/jdk.internal.math", "java.base/jdk.internal.module",
                   "java.base/jdk.internal.util.jar", "jdk.management/com.sun.management.internal",
                   "java.base/sun.nio.ch", "java.base/java.io", "java.base/java.lang.reflect",
                   "jdk.compiler/com.sun.tools.javac", "java.base/java.lang", "java.base/java.util",
                   "java.base/java.nio")

    @property
    def ports(self) -> dict[str, int]:
        s = self.settings
        return {"cassandra_port": s.cassandra_port, "cassandra_storage_port": s.cassandra_storage_port,
                "cassandra_jmx_port": self.jmx_port}

    @property
    def jmx_port(self) -> int:
        """JMX listens on 127.0.0.1 only, so each node of a cluster takes the next port."""
        return self.settings.cassandra_jmx_port + max(self.node - 1, 0)

    def prepare(self, java: str, lib: Path) -> None:
        self.make_dirs()
        s = self.settings
        (self.conf / "cassandra.yaml").write_text(render(
            "cassandra.yaml", host=self.host, port=s.cassandra_port, storage_port=s.cassandra_storage_port,
            data_dir=self.data, seed=s.node_host(min(self.node, 1))))
        (self.conf / "logback.xml").write_text(render("cassandra-logback.xml"))

    def command(self, java: str, lib: Path) -> list[str]:
        s = self.settings
        heap = s.cassandra_heap
        replicas = min(s.nodes, 3)
        jpms = [f"--add-exports={m}=ALL-UNNAMED" for m in self._JPMS_EXPORTS]
        jpms += [f"--add-opens={m}=ALL-UNNAMED" for m in self._JPMS_OPENS]
        jamm = sorted(lib.glob("jamm-*.jar"))
        agent = [f"-javaagent:{jamm[0]}"] if jamm else []
        return [
            java, f"-Xms{heap}", f"-Xmx{heap}", "-Xss256k", "-XX:+UseG1GC", "-XX:+ParallelRefProcEnabled",
            "-XX:MaxGCPauseMillis=300", "-XX:+ExitOnOutOfMemoryError", "-XX:TieredStopAtLevel=1",
            "-ea", "-da:net.openhft...",
            "-Djava.net.preferIPv4Stack=true", "-Djdk.attach.allowAttachSelf=true",
            "-Dio.netty.tryReflectionSetAccessible=true", "-Dio.netty.allocator.useCacheForAllThreads=true",
            "-Dio.netty.allocator.maxOrder=11", *jpms, *agent,
            f"-Dcassandra.config=file://{self.conf / 'cassandra.yaml'}", f"-Dcassandra.storagedir={self.data}",
            f"-Dcassandra.logdir={self.logs}", f"-Dlogback.configurationFile={self.conf / 'logback.xml'}",
            "-Dcassandra-foreground=yes", f"-Dcassandra.jmx.local.port={self.jmx_port}",
            f"-Djava.rmi.server.hostname={s.host}", "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            f"-Dcassandra.ring_delay_ms={self.ring_delay_ms}", f"-Dcassandra.system_distributed.default_rf={replicas}",
            f"-Dcassandra.system_traces.default_rf={replicas}", f"-Dcassandra.system_auth.default_rf={replicas}",
            "-Dcassandra.superuser_setup_delay_ms=0",
            f"-Djava.io.tmpdir={self.tmp}",
            "-cp", f"{self.conf}:{lib}/*", "org.apache.cassandra.service.CassandraDaemon",
        ]

    @property
    def ring_delay_ms(self) -> int:
        """How long a node waits for gossip before it bootstraps. A joining node must have gossiped with the
        seed by then ("Unable to contact any seeds" otherwise: seen with 1 s on a loaded 2-core machine), so
        nodes after the seed wait 5 s; the seed and a single node have nobody to wait for."""
        return 1000 if self.node <= 1 else 5000

    def probe(self) -> str:
        """This node's own answer (the query goes to this node only), and, on a cluster, its view of the
        ring: the nodes that joined before it (they join in turn) and itself gossiping as NORMAL."""
        return self._probe(ring=self.node)

    def probe_cluster(self, nodes: int | None = None) -> str:
        return self._probe(ring=(nodes or self.settings.nodes) if self.node > 0 else 0)

    def _probe(self, ring: int) -> str:
        from cassandra.cluster import Cluster
        from cassandra.policies import WhiteListRoundRobinPolicy

        cluster = Cluster([self.host], port=self.settings.cassandra_port, connect_timeout=3,
                          control_connection_timeout=3, protocol_version=5,
                          load_balancing_policy=WhiteListRoundRobinPolicy([self.host]))
        try:
            session = cluster.connect()
            row = session.execute("SELECT release_version FROM system.local", timeout=5).one()
            if ring:
                self._check_ring(session, ring)
            return str(row.release_version)
        finally:
            cluster.shutdown()

    def _check_ring(self, session: object, ring: int) -> None:
        """Nodes 1..``ring`` are in this node's gossip with status NORMAL."""
        rows = session.execute("SELECT address, status, status_with_port FROM system_views.gossip_info",  # type: ignore[attr-defined]
                               timeout=5)
        normal = {str(r.address) for r in rows if str(r.status_with_port or r.status or "").startswith("NORMAL")}
        wanted = {self.settings.node_host(n) for n in range(1, ring + 1)}
        if not wanted <= normal:
            raise ServiceStartError(f"{self.label}: nodes not NORMAL in the ring yet: {sorted(wanted - normal)}")


class RegistryServer(Server):
    """Apicurio Registry, the Quarkus application Maven Central publishes as one archive; storage in memory (a
    restart forgets every schema: a test and development registry). Needs Java 21+."""

    name = "registry"
    fatal_lines = ("Failed to start application",)
    ARTIFACT = "io.apicurio:apicurio-registry-app:3.3.3:tar.gz:all"

    @property
    def ports(self) -> dict[str, int]:
        return {"registry_port": self.settings.registry_port}

    @property
    def start_timeout(self) -> float:
        return self.settings.registry_start_timeout

    @property
    def version(self) -> str:
        return self.ARTIFACT.split(":")[2]

    @property
    def marker(self) -> str:
        return f"-Dquarkus.http.port={self.settings.registry_port}"

    def find_java(self) -> str:
        from rxcqrs.services.java import find_java21

        return find_java21(self.settings.registry_java)

    def fetch(self) -> Path:
        from rxcqrs.services.jars import fetch_app

        return fetch_app(self.name, self.ARTIFACT, self.settings.jar_cache)

    def prepare(self, java: str, lib: Path) -> None:
        self.make_dirs()

    def command(self, java: str, lib: Path) -> list[str]:
        heap = self.settings.registry_heap
        return [java, f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                f"-Djava.io.tmpdir={self.tmp}", f"-Dquarkus.http.host={self.host}", self.marker,
                "-Dquarkus.http.access-log.enabled=false", "-jar", str(lib / "quarkus-run.jar")]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.settings.registry_port}"

    def probe(self) -> str:
        """The Confluent-compatible API answers, and the registry's own version."""
        import json
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/apis/ccompat/v7/subjects", timeout=5) as answer:
            json.load(answer)
        with urllib.request.urlopen(f"{self.url}/apis/registry/v3/system/info", timeout=5) as answer:
            return str(json.load(answer).get("version", "unknown"))


SERVERS: dict[str, type[Server]] = {"cassandra": CassandraServer, "kafka": KafkaServer, "registry": RegistryServer}
