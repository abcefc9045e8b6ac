"""``--isolate-cpus``: the servers that ``rxcqrs services`` started on some cores, every contender on the others.

On a small machine Kafka's and Cassandra's JVMs share the cores with the consumers under test; this takes that
sharing out of a run's figures, as where the servers run on other machines. The servers' threads are pinned
(the threads they start later inherit it) and set back to every core when the run ends; this process is pinned
before it starts any thread, so every thread and child (a revision's process) inherits it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from rxcqrs.exceptions import ConfigError

__all__ = ["parse_cpus", "isolate"]


def parse_cpus(text: str) -> tuple[set[int], set[int]]:
    """``"0:1"`` (servers' cores, then the contenders'; each a comma list such as ``0,1``) as two disjoint sets
    of this machine's cores."""
    available = os.sched_getaffinity(0)
    try:
        servers, contenders = ({int(c) for c in part.split(",")} for part in text.split(":"))
    except ValueError:
        raise ConfigError(f"--isolate-cpus {text!r}: give the servers' cores, a colon, then the contenders' "
                          f"(e.g. 0:1 of this machine's {sorted(available)})") from None
    if not servers or not contenders or servers & contenders or not (servers | contenders) <= available:
        raise ConfigError(f"--isolate-cpus {text!r}: the two sets must be disjoint cores of this machine's "
                          f"{sorted(available)} (e.g. 0:1)")
    return servers, contenders


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process ``pid`` on ``cpus``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except (ProcessLookupError, FileNotFoundError):
            continue  # a thread that ended meanwhile


def isolate(servers: set[int], contenders: set[int]) -> Callable[[], None]:
    """Pin the running servers to ``servers`` and this process to ``contenders``; returns what sets the
    servers back to every core of the machine. Refused (one line) when no server of ``rxcqrs services`` runs."""
    from rxcqrs.services import status

    every = os.sched_getaffinity(0)
    os.sched_setaffinity(0, contenders)  # first: the threads of the status probe inherit it too
    pids = [s.pid for s in status() if s.running and s.pid is not None]
    if not pids:
        os.sched_setaffinity(0, every)
        raise ConfigError("--isolate-cpus: no server started by `rxcqrs services up` is running; start them first")
    for pid in pids:
        _pin(pid, servers)
    print(f"servers (pids {', '.join(map(str, pids))}) on cores {sorted(servers)}, contenders on "
          f"{sorted(contenders)}", flush=True)

    def restore() -> None:
        for pid in pids:
            try:
                _pin(pid, every)
            except FileNotFoundError:
                continue  # a server that stopped meanwhile
    return restore
