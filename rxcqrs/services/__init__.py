"""Real Apache Kafka 4.x and Apache Cassandra 5.0 on 127.0.0.1, fetched from Maven Central and started by rxcqrs.

``up()`` is idempotent: healthy servers that rxcqrs started (from any checkout: the home is per user) are
reused; a port held by anything else is refused with a clear error. ``down()`` stops by recorded PID.
The same functions back the ``rxcqrs services up|down|status`` command, the test fixtures and notebooks.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable

from rxcqrs.exceptions import ServiceError, ServiceStartError
from rxcqrs.services.jars import fetch_jars, file_lock, pinned_version
from rxcqrs.services.java import find_java17
from rxcqrs.services.process import ServerState, check_ports_free, launch, terminate, wait_ready
from rxcqrs.services.servers import SERVERS, CassandraServer, KafkaServer, Server
from rxcqrs.services.settings import ServicesSettings

__all__ = ["ServicesSettings", "ServerStatus", "up", "down", "status", "fetch", "KafkaServer", "CassandraServer"]

ALL = ("cassandra", "kafka")  # Cassandra first: it takes longest, Kafka starts meanwhile on a second core


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

    def describe(self) -> str:
        ports = ", ".join(f"{p}" for p in self.ports.values())
        if not self.running:
            return f"{self.name:<9} stopped   ({self.detail})"
        state = "running" if self.healthy else "UNHEALTHY"
        return (f"{self.name:<9} {state:<9} pid {self.pid}, 127.0.0.1 ports {ports}, version {self.version} "
                f"({self.detail})")


def _servers(names: Iterable[str] | None, settings: ServicesSettings) -> list[Server]:
    chosen = list(names or ALL)
    unknown = [n for n in chosen if n not in SERVERS]
    if unknown:
        raise ServiceError(f"unknown server(s) {unknown}; choose from {list(SERVERS)}")
    return [SERVERS[n](settings) for n in ALL if n in chosen]


def fetch(names: Iterable[str] | None = None, settings: ServicesSettings | None = None) -> None:
    """Download the jars (once per pinned version) without starting anything."""
    settings = settings or ServicesSettings.from_env()
    for server in _servers(names, settings):
        fetch_jars(server.name, settings.jar_cache)


def _probe_status(server: Server, state: ServerState) -> ServerStatus:
    try:
        version = server.probe()
        return ServerStatus(server.name, True, True, state.pid, state.ports, version,
                            f"up {time.time() - state.started_at:.0f}s, log {state.log}")
    except Exception as exc:
        return ServerStatus(server.name, True, False, state.pid, state.ports, state.version,
                            f"probe failed: {exc!r}; log {state.log}")


def _up_one(server: Server, settings: ServicesSettings, say: Callable[[str], None]) -> ServerStatus:
    with file_lock(server.dir / ".lock"):
        state = ServerState.load(server.state_file)
        if state is not None and state.is_running():
            return _reuse(server, state, say)
        server.state_file.unlink(missing_ok=True)
        return _start(server, settings, say, grace=15.0 if state is not None else 0.0)


def _reuse(server: Server, state: ServerState, say: Callable[[str], None]) -> ServerStatus:
    """A server rxcqrs started (from any checkout) is running: use it if it answers on the wanted ports."""
    current = _probe_status(server, state)
    if current.healthy and state.ports != server.ports:
        raise ServiceError(f"{server.name} started by rxcqrs already runs on ports {state.ports}, not "
                           f"{server.ports}; run `rxcqrs services down {server.name}` first")
    if not current.healthy:  # alive but not answering: maybe still starting (another checkout), give it time
        say(f"{server.name}: pid {state.pid} is running but not ready yet; waiting")
        deadline = time.monotonic() + server.start_timeout
        while not current.healthy and time.monotonic() < deadline and state.is_running():
            time.sleep(1)  # the probe itself takes up to a few seconds; this only paces it
            current = _probe_status(server, state)
        if not current.healthy:
            raise ServiceStartError(f"{server.name} (pid {state.pid}, started by rxcqrs) does not answer: "
                                    f"{current.detail}. Run `rxcqrs services down {server.name}` and retry.")
    return replace(current, reused=True)


def _start(server: Server, settings: ServicesSettings, say: Callable[[str], None], grace: float = 0.0
           ) -> ServerStatus:
    check_ports_free(server.name, settings.host, server.ports, grace)
    java = find_java17(settings.java)
    say(f"{server.name}: fetching jars for {pinned_version(server.name)} (cached after the first time)")
    lib = fetch_jars(server.name, settings.jar_cache)
    server.prepare(java, lib)
    say(f"{server.name}: starting on {settings.host} ports {sorted(server.ports.values())}, log {server.log}")
    started = time.time()
    proc = launch(server.command(java, lib), server.log, cwd=server.dir)
    state = ServerState(server.name, proc.pid, server.ports, server.marker, "starting", started, str(server.log))
    state.save(server.state_file)
    version = str(wait_ready(server.name, proc, server.log, server.probe, server.start_timeout, server.fatal_lines))
    replace(state, version=version).save(server.state_file)
    say(f"{server.name}: ready in {time.time() - started:.1f}s, version {version}")
    return ServerStatus(server.name, True, True, proc.pid, server.ports, version, f"log {server.log}")


def up(names: Iterable[str] | None = None, settings: ServicesSettings | None = None,
       say: Callable[[str], None] = lambda _msg: None) -> list[ServerStatus]:
    """Make sure the servers run and answer real client requests; start what is missing.

    Kafka is started while Cassandra boots (Cassandra is the slow one), then both are awaited.
    """
    settings = settings or ServicesSettings.from_env()
    servers = _servers(names, settings)
    if len(servers) == 1:
        return [_up_one(servers[0], settings, say)]
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(len(servers)) as pool:
        futures = [pool.submit(_up_one, server, settings, say) for server in servers]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]  # type: ignore[misc]
        return [f.result() for f in futures]


def status(names: Iterable[str] | None = None, settings: ServicesSettings | None = None) -> list[ServerStatus]:
    """What runs, as the servers themselves report it (a real metadata call / CQL query)."""
    settings = settings or ServicesSettings.from_env()
    result = []
    for server in _servers(names, settings):
        state = ServerState.load(server.state_file)
        if state is None or not state.is_running():
            detail = "never started here" if state is None else f"pid {state.pid} is gone"
            result.append(ServerStatus(server.name, False, False, None, server.ports, None, detail))
        else:
            result.append(_probe_status(server, state))
    return result


def down(names: Iterable[str] | None = None, settings: ServicesSettings | None = None, *, wipe: bool = False,
         say: Callable[[str], None] = lambda _msg: None) -> None:
    """Stop by recorded PID (SIGTERM, SIGKILL after ``stop_timeout``); ``wipe`` also deletes data and logs."""
    settings = settings or ServicesSettings.from_env()
    for server in reversed(_servers(names, settings)):
        with file_lock(server.dir / ".lock"):
            state = ServerState.load(server.state_file)
            if state is not None and state.is_running():
                say(f"{server.name}: stopping pid {state.pid}")
                killed = terminate(state.pid, settings.stop_timeout)
                say(f"{server.name}: {'killed after timeout' if killed else 'stopped'}")
            elif state is not None:
                say(f"{server.name}: pid {state.pid} already gone")
            else:
                say(f"{server.name}: not running")
            server.state_file.unlink(missing_ok=True)
            if wipe:
                for path in (server.data, server.logs, server.tmp, server.conf):
                    shutil.rmtree(path, ignore_errors=True)
                say(f"{server.name}: data and logs wiped")
