"""``--isolate-cpus``: the servers' cores and the contenders' are disjoint, and the servers get every core back."""
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

import rxcqrs.services
from benchmarks.isolation import isolate, parse_cpus
from rxcqrs.exceptions import ConfigError
from rxcqrs.services import ServerStatus
from rxcqrs.testing.wait import wait_until

CORES = sorted(os.sched_getaffinity(0))
needs_two = pytest.mark.skipif(len(CORES) < 2, reason="isolating cores needs two of them")  # CI machines have 2


@needs_two
def test_two_disjoint_sets_of_this_machines_cores_are_taken() -> None:
    assert parse_cpus(f"{CORES[0]}:{CORES[1]}") == ({CORES[0]}, {CORES[1]})


@pytest.mark.parametrize("text", ["0", "a:b", "0:", "0:0", "0,1:1", "0:4096", "0:1:2"])
def test_a_bad_set_is_refused_with_one_line(text: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_cpus(text)
    assert "--isolate-cpus" in str(refused.value) and "\n" not in str(refused.value)


@pytest.fixture
def server_with_threads() -> Iterator[int]:
    """A process with a few threads, standing in for a server's JVM."""
    code = ("import threading, time\n"
            "for _ in range(3): threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
            "print('ready', flush=True)\ntime.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    own = os.sched_getaffinity(0)
    try:
        yield proc.pid
    finally:
        os.sched_setaffinity(0, own)
        proc.kill()
        proc.wait(10)


@needs_two
def test_the_servers_threads_are_pinned_and_given_every_core_back(server_with_threads: int,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pid = server_with_threads
    every = os.sched_getaffinity(0)
    servers = [ServerStatus("kafka", True, True, pid, {}, "test", ""),
               ServerStatus("cassandra", False, False, None, {}, None, "")]
    monkeypatch.setattr(rxcqrs.services, "status", lambda: servers)

    def cores_of_threads() -> list[set[int]]:
        return [os.sched_getaffinity(int(t.name)) for t in Path(f"/proc/{pid}/task").iterdir()]

    wait_until(lambda: len(cores_of_threads()) == 4, 10)
    restore = isolate({CORES[0]}, {CORES[1]})
    assert cores_of_threads() == [{CORES[0]}] * 4
    assert os.sched_getaffinity(0) == {CORES[1]}
    restore()
    assert cores_of_threads() == [every] * 4


def test_without_a_running_server_isolation_is_refused_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    own = os.sched_getaffinity(0)
    monkeypatch.setattr(rxcqrs.services, "status", lambda: [ServerStatus("kafka", False, False, None, {}, None, "")])
    with pytest.raises(ConfigError, match="no server"):
        isolate({CORES[0]}, {CORES[-1]})
    assert os.sched_getaffinity(0) == own


def test_a_bad_set_ends_the_run_with_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import benchmarks.__main__ as bench

    monkeypatch.setattr(sys, "argv", ["benchmarks", "--isolate-cpus", "0:0"])
    monkeypatch.setattr(bench, "_prepared_session", lambda _: pytest.fail("a refused run connects to nothing"))
    assert bench.main() == 2
    err = capsys.readouterr().err
    assert err.startswith("benchmarks: --isolate-cpus '0:0'") and err.count("\n") == 1


@needs_two
def test_the_servers_get_their_cores_back_when_the_connect_fails(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    import benchmarks.__main__ as bench
    import benchmarks.isolation

    restored: list[bool] = []
    monkeypatch.setattr(benchmarks.isolation, "isolate", lambda servers, contenders: lambda: restored.append(True))

    def unreachable(_: object) -> None:
        raise ConnectionError("no cassandra")

    monkeypatch.setattr(bench, "_prepared_session", unreachable)
    figures = tmp_path / "bench.json"
    argv = ["benchmarks", "--isolate-cpus", f"{CORES[0]}:{CORES[-1]}", "--json", str(figures)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(ConnectionError):
        bench.main()
    assert restored == [True]
    assert not figures.exists()  # nothing ran: no figures overwritten
