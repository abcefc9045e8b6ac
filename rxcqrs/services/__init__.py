"""Real Apache Kafka 4.x and Apache Cassandra 5.0 (and, when asked for, a schema registry) on 127.0.0.1, fetched
from Maven Central and started by rxcqrs.

``up()`` is idempotent: healthy servers that rxcqrs started (from any checkout: the home is per user) are
reused; a port held by anything else is refused with a clear error. ``down()`` stops by recorded PID.
The same functions back the ``rxcqrs services up|down|status`` command, the test fixtures and notebooks.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable

from rxcqrs.exceptions import ServiceError, ServiceStartError
from rxcqrs.services.jars import file_lock
from rxcqrs.services.process import ServerState, check_ports_free, launch, terminate, wait_ready
from rxcqrs.services.servers import SERVERS, CassandraServer, KafkaServer, RegistryServer, Server
from rxcqrs.services.settings import ServicesSettings

__all__ = ["ServicesSettings", "ServerStatus", "up", "down", "status", "fetch", "KafkaServer", "CassandraServer",
           "RegistryServer", "wait_until_cluster_ready"]

DEFAULT = ("cassandra", "kafka")  # what ``up`` starts unless asked: Cassandra first, it takes longest
ALL = ("cassandra", "kafka", "registry")  # ``all``; the registry only when named


@dataclass(frozen=True)
class ServerStatus:
    """One line of ``rxcqrs services status``."""

    name: str
    running: bool
    healthy: bool
    pid: int | None
    ports: dict[str, int]
    version: str | None
    detail: str
    reused: bool = False
    host: str = "127.0.0.1"

    def describe(self, width: int = 9) -> str:
        """One line; ``width``: the name column (the longest name of a listing, ``cassandra-3`` on a cluster)."""
        ports = ", ".join(f"{p}" for p in self.ports.values())
        if not self.running:
            return f"{self.name:<{width}} stopped   ({self.detail})"
        state = "running" if self.healthy else "UNHEALTHY"
        return (f"{self.name:<{width}} {state:<9} pid {self.pid}, {self.host} ports {ports}, version {self.version} "
                f"({self.detail})")


def _servers(names: Iterable[str] | None, settings: ServicesSettings, *, found: bool = False) -> list[Server]:
    """The servers of ``settings`` (one of each kind, or every node of each cluster), Cassandra first.

    ``found``: the nodes that have a state file in the home, if any (``status`` and ``down`` see a cluster
    even when asked without ``--nodes``)."""
    chosen = list(names or DEFAULT)
    if "all" in chosen:
        chosen = list(ALL)
    unknown = [n for n in chosen if n not in SERVERS]
    if unknown:
        raise ServiceError(f"unknown server(s) {unknown}; choose from {list(SERVERS)} or all")
    if found and not names and (settings.home / "registry" / "server.json").exists():
        chosen.append("registry")  # status and down see a registry that was started
    result = []
    for kind in (n for n in ALL if n in chosen):
        if kind == "registry":  # one registry, whatever the cluster
            result.append(SERVERS[kind](settings, 0))
            continue
        nodes = set(settings.node_numbers)
        if found:
            on_disk = {0} if (settings.home / kind / "server.json").exists() else set()
            on_disk |= {int(p.parent.name.rsplit("-", 1)[1]) for p in settings.home.glob(f"{kind}-[1-9]/server.json")}
            nodes = on_disk or nodes
        layout = settings if settings.nodes >= max(nodes) else settings.with_(nodes=max(nodes))
        result += [SERVERS[kind](layout, n) for n in sorted(nodes)]
    return result


def fetch(names: Iterable[str] | None = None, settings: ServicesSettings | None = None) -> None:
    """Download the jars (once per pinned version) without starting anything."""
    settings = settings or ServicesSettings.from_env()
    for server in _servers(names, settings):
        server.fetch()


def _probe_status(server: Server, state: ServerState, *, whole_cluster: bool = False) -> ServerStatus:
    """``whole_cluster``: healthy only if this node also sees every other node (``status``); without it, only
    this node's own answer (``up`` reusing a node while others are still missing)."""
    try:
        version = server.probe_cluster() if whole_cluster else server.probe()
        return ServerStatus(server.label, True, True, state.pid, state.ports, version,
                            f"up {time.time() - state.started_at:.0f}s, log {state.log}", host=server.host)
    except Exception as exc:
        return ServerStatus(server.label, True, False, state.pid, state.ports, state.version,
                            f"probe failed: {exc!r}; log {state.log}", host=server.host)


def _up_one(server: Server, settings: ServicesSettings, say: Callable[[str], None]) -> ServerStatus:
    started = _launch_or_find(server, settings, say)
    return _reuse(server, started, say) if isinstance(started, ServerState) else _await(server, *started, say)


def _launch_or_find(server: Server, settings: ServicesSettings, say: Callable[[str], None]
                    ) -> ServerState | tuple[subprocess.Popen[bytes], ServerState]:
    """A running instance's state, or a freshly launched process (not awaited) and its state."""
    with file_lock(server.dir / ".lock"):
        state = ServerState.load(server.state_file)
        if state is not None and state.is_running():
            return state
        server.state_file.unlink(missing_ok=True)
        return _launch(server, settings, say, grace=15.0 if state is not None else 0.0)


def _reuse(server: Server, state: ServerState, say: Callable[[str], None]) -> ServerStatus:
    """A server rxcqrs started (from any checkout) is running: use it if it answers on the wanted ports."""
    current = _probe_status(server, state)
    if current.healthy and state.ports != server.ports:
        raise ServiceError(f"{server.label} started by rxcqrs already runs on ports {state.ports}, not "
                           f"{server.ports}; run `rxcqrs services down {server.name}` first")
    if not current.healthy:  # alive but not answering: maybe still starting (another checkout), give it time
        say(f"{server.label}: pid {state.pid} is running but not ready yet; waiting")
        deadline = time.monotonic() + server.start_timeout
        while not current.healthy and time.monotonic() < deadline and state.is_running():
            time.sleep(1)  # the probe itself takes up to a few seconds; this only paces it
            current = _probe_status(server, state)
        if not current.healthy:
            raise ServiceStartError(f"{server.label} (pid {state.pid}, started by rxcqrs) does not answer: "
                                    f"{current.detail}. Run `rxcqrs services down {server.name}` and retry.")
    return replace(current, reused=True)


def _launch(server: Server, settings: ServicesSettings, say: Callable[[str], None], grace: float = 0.0
            ) -> tuple[subprocess.Popen[bytes], ServerState]:
    check_ports_free(server.label, server.host, server.ports, grace)
    java = server.find_java()
    say(f"{server.label}: fetching {server.version} (cached after the first time)")
    lib = server.fetch()
    server.prepare(java, lib)
    say(f"{server.label}: starting on {server.host} ports {sorted(server.ports.values())}, log {server.log}")
    proc = launch(server.command(java, lib), server.log, cwd=server.dir)
    state = ServerState(server.label, proc.pid, server.ports, server.marker, "starting", time.time(),
                        str(server.log))
    state.save(server.state_file)
    return proc, state


def _await(server: Server, proc: subprocess.Popen[bytes], state: ServerState, say: Callable[[str], None]
           ) -> ServerStatus:
    version = str(wait_ready(server.label, proc, server.log, server.probe, server.start_timeout,
                             server.fatal_lines))
    replace(state, version=version).save(server.state_file)
    say(f"{server.label}: ready in {time.time() - state.started_at:.1f}s, version {version}")
    return ServerStatus(server.label, True, True, proc.pid, server.ports, version, f"log {server.log}",
                        host=server.host)


def _up_cluster(servers: list[Server], settings: ServicesSettings, say: Callable[[str], None]
                ) -> list[ServerStatus]:
    """Every node of one kind. Cassandra nodes join in turn (the seed first: one bootstrap at a time);
    Kafka nodes start together (no broker is ready before a majority of the controller quorum runs)."""
    if servers[0].name == "kafka":
        started = [_launch_or_find(server, settings, say) for server in servers]
        return [_reuse(server, s, say) if isinstance(s, ServerState) else _await(server, *s, say)
                for server, s in zip(servers, started, strict=True)]
    seed, *others = servers
    result = [_up_one(seed, settings, say)]
    for server in others:
        result.append(_join(server, settings, say))
        # the seed must see it NORMAL before the next one asks the seed about the ring
        wait_until_cluster_ready(seed, say, nodes=server.node)
    return result


#: start-up attempts of a Cassandra node joining the seed
JOIN_ATTEMPTS = 3


def _join(server: Server, settings: ServicesSettings, say: Callable[[str], None]) -> ServerStatus:
    """Start a node after the seed. A failed bootstrap (e.g. "Unable to contact any seeds" on a loaded
    machine) is retried by starting the node again, as Cassandra advises; each attempt has its deadline."""
    for attempt in range(1, JOIN_ATTEMPTS):
        try:
            return _up_one(server, settings, say)
        except ServiceStartError as exc:
            say(f"{server.label}: could not join ({str(exc).splitlines()[0]}); starting it again "
                f"(attempt {attempt + 1} of {JOIN_ATTEMPTS})")
    return _up_one(server, settings, say)  # the last attempt: its failure is the caller's


def wait_until_cluster_ready(server: Server, say: Callable[[str], None] = lambda _msg: None,
                             nodes: int | None = None) -> None:
    """Until ``server`` sees nodes 1..``nodes`` (default: all) of its cluster (Cassandra: NORMAL in its
    gossip)."""
    deadline = time.monotonic() + server.start_timeout
    nodes = nodes or server.settings.nodes
    while True:
        try:
            server.probe_cluster(nodes)
            say(f"{server.name}: {nodes} of {server.settings.nodes} nodes up in the ring")
            return
        except Exception as exc:
            if time.monotonic() >= deadline:
                raise ServiceStartError(f"{server.name} cluster not complete after {server.start_timeout:g}s: "
                                        f"{exc}") from None
        time.sleep(1)  # paces the probe; the deadline bounds it


def up(names: Iterable[str] | None = None, settings: ServicesSettings | None = None,
       say: Callable[[str], None] = lambda _msg: None) -> list[ServerStatus]:
    """Make sure the servers run and answer real client requests; start what is missing.

    Kafka is started while Cassandra boots (Cassandra is the slow one), then both are awaited. With
    ``settings.nodes > 1`` each kind is a cluster (see :func:`_up_cluster`).
    """
    settings = settings or ServicesSettings.from_env()
    servers = _servers(names, settings)
    kinds = [[s for s in servers if s.name == kind] for kind in ALL]
    kinds = [group for group in kinds if group]

    def up_kind(group: list[Server]) -> list[ServerStatus]:
        return _up_cluster(group, settings, say) if len(group) > 1 else [_up_one(group[0], settings, say)]

    if len(kinds) == 1:
        return up_kind(kinds[0])
    with concurrent.futures.ThreadPoolExecutor(len(kinds)) as pool:
        futures = [pool.submit(up_kind, group) for group in kinds]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]  # type: ignore[misc]
        return [line for f in futures for line in f.result()]


def status(names: Iterable[str] | None = None, settings: ServicesSettings | None = None) -> list[ServerStatus]:
    """What runs, as the servers themselves report it (a real metadata call / CQL query), every node."""
    settings = settings or ServicesSettings.from_env()
    result = []
    for server in _servers(names, settings, found=True):
        state = ServerState.load(server.state_file)
        if state is None or not state.is_running():
            detail = "never started here" if state is None else f"pid {state.pid} is gone"
            result.append(ServerStatus(server.label, False, False, None, server.ports, None, detail,
                                       host=server.host))
        else:
            result.append(_probe_status(server, state, whole_cluster=True))
    return result


def down(names: Iterable[str] | None = None, settings: ServicesSettings | None = None, *, wipe: bool = False,
         say: Callable[[str], None] = lambda _msg: None) -> None:
    """Stop by recorded PID (SIGTERM, SIGKILL after ``stop_timeout``), every node found in the home;
    ``wipe`` also deletes data and logs."""
    settings = settings or ServicesSettings.from_env()
    for server in reversed(_servers(names, settings, found=True)):
        with file_lock(server.dir / ".lock"):
            state = ServerState.load(server.state_file)
            if state is not None and state.is_running():
                say(f"{server.label}: stopping pid {state.pid}")
                killed = terminate(state.pid, settings.stop_timeout)
                say(f"{server.label}: {'killed after timeout' if killed else 'stopped'}")
            elif state is not None:
                say(f"{server.label}: pid {state.pid} already gone")
            else:
                say(f"{server.label}: not running")
            server.state_file.unlink(missing_ok=True)
            if wipe:
                for path in (server.data, server.logs, server.tmp, server.conf):
                    shutil.rmtree(path, ignore_errors=True)
                say(f"{server.label}: data and logs wiped")
    if wipe and (names is None or "kafka" in names):
        (settings.home / "kafka-cluster.id").unlink(missing_ok=True)
