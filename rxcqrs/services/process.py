"""Start, watch and stop one server JVM: state file, port checks, readiness racing the process, TERM/KILL."""

from __future__ import annotations

import concurrent.futures
import errno
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from rxcqrs.exceptions import PortInUseError, ServiceStartError

__all__ = ["ServerState", "port_is_free", "check_ports_free", "pid_alive", "launch", "wait_ready", "terminate",
           "log_tail"]


@dataclass(frozen=True)
class ServerState:
    """What ``up`` records about a running server (``<home>/<server>/server.json``)."""

    name: str
    pid: int
    ports: dict[str, int]
    marker: str  # a path that appears on the process command line: proves the PID is still ours
    version: str
    started_at: float
    log: str

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "ServerState | None":
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def is_running(self) -> bool:
        """The recorded PID is alive and still runs our command (PIDs get reused)."""
        return pid_alive(self.pid) and self.marker in _cmdline(self.pid)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        return "\nState:\tZ" not in status
    except OSError:
        return True


def port_is_free(host: str, port: int) -> bool:
    """True if a listener could bind ``host:port`` now (SO_REUSEADDR, as the JVM servers use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def check_ports_free(server: str, host: str, ports: dict[str, int], grace: float = 0.0) -> None:
    """Refuse ports held by another process. ``grace``: how long to wait for ports of an instance of ours
    that just died (a killed JVM's leader thread is reaped before its other threads let go of their sockets)."""
    deadline = time.monotonic() + grace
    while True:
        taken = {name: port for name, port in ports.items() if not port_is_free(host, port)}
        if not taken or time.monotonic() >= deadline:
            break
        time.sleep(0.2)  # pacing while the kernel tears the old process down; the deadline bounds it
    if taken:
        listing = ", ".join(f"{port} ({name})" for name, port in taken.items())
        setting = ", ".join(f"RXCQRS_{name.upper()}" for name in taken)
        raise PortInUseError(
            f"cannot start {server}: {host}:{listing} already in use by a process rxcqrs did not start. "
            f"Stop that process, or choose other ports with {setting}.")


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def log_excerpt(path: Path, needle: str, lines: int = 25) -> str:
    """The first line of the log holding ``needle`` and the ``lines`` after it: the exception and its cause,
    which the tail has often scrolled past (a server logs its whole shutdown after a failed start)."""
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    for i, line in enumerate(text):
        if needle in line:
            return "\n".join(text[i:i + lines])
    return ""


def launch(cmd: Sequence[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a server in its own session, stdout+stderr appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n==== rxcqrs start {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n".encode())
        out.flush()
        return subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=cwd, env=env, start_new_session=True)


def wait_ready(name: str, proc: subprocess.Popen[bytes], log: Path, probe: Callable[[], object],
               timeout: float, fatal_lines: Sequence[str] = ()) -> object:
    """Poll ``probe`` until it returns without raising; fail at once if the process dies or logs a fatal line.

    The deadline counts the probes' own time: each probe runs on a helper thread and is awaited only until
    the deadline, so a probe that blocks for seconds cannot stretch a short timeout. Returns what the probe
    returned. On failure the error carries the tail of the server log.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    delay = 0.25
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"rxcqrs-probe-{name}")
    try:
        while True:
            code = proc.poll()
            if code is not None:
                raise ServiceStartError(f"{name} exited with code {code} during start-up; log {log}:\n"
                                        f"{log_tail(log)}")
            tail = log_tail(log, 200)
            for line in fatal_lines:
                if line in tail:
                    terminate(proc.pid, 10)
                    raise ServiceStartError(f"{name} failed during start-up ({line!r}); log {log}:\n"
                                            f"{log_excerpt(log, line)}\n[...]\n{log_tail(log, 15)}")
            attempt = pool.submit(probe)
            try:
                return attempt.result(timeout=max(0.0, deadline - time.monotonic()))
            except concurrent.futures.TimeoutError:
                last_error = last_error or TimeoutError("the readiness probe was still waiting for an answer")
            except Exception as exc:  # the probe raises until the server answers
                last_error = exc
            if time.monotonic() >= deadline:
                terminate(proc.pid, 10)
                attempt.cancel()
                raise ServiceStartError(
                    f"{name} was not ready after {timeout:g}s (last probe error: {last_error!r}); log {log}:\n"
                    f"{log_tail(log)}")
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 2.0)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a probe still waiting is abandoned, not awaited


def terminate(pid: int, timeout: float) -> bool:
    """SIGTERM the process group of ``pid``, wait up to ``timeout`` s, then SIGKILL. True if it had to kill."""
    def signal_group(sig: int) -> None:
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    if not pid_alive(pid):
        return False
    signal_group(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return False
        time.sleep(0.2)
    signal_group(signal.SIGKILL)
    for _ in range(50):
        _reap(pid)
        if not pid_alive(pid):
            break
        time.sleep(0.1)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
