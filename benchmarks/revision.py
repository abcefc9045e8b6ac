"""rxcqrs batched as another revision of this repository runs it, beside today's contenders (``--against REV``).

The revision is checked out once into ``build/against/<commit>`` (a detached ``git worktree``) and each round
runs in a process of its own with that checkout first on ``sys.path``: its own ``benchmarks.cart.rxcqrs_mode``
(its engine, its defaults, its verification of the final state) on the same topic as every other contender.
Run as a script, this module is that process: it prints one JSON line (rate, CPU per command, verified).
Rate and CPU are timed as today's contenders are, from the source's start until every record is committed,
found by the commit that did it (the revision's own wait is replaced by today's, woken by every commit of its
``Committer``; a revision without ``Committer._committed_now`` is polled every 2 ms); a revision whose
``rxcqrs_mode`` reports no CPU gets the child's own from just before its pipeline starts until its verification
begins.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["checkout", "contender"]

ROOT = Path(__file__).resolve().parent.parent


def checkout(rev: str) -> Path:
    """The worktree of ``rev`` (made once; a name such as ``HEAD~3`` is resolved to its commit first)."""
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=ROOT,
                           capture_output=True, text=True)
    if found.returncode != 0:
        raise SystemExit(f"--against {rev}: no such commit in this repository (give a commit, tag or branch)")
    commit = found.stdout.strip()
    tree = ROOT / "build" / "against" / commit[:12]
    if not (tree / "rxcqrs").is_dir():
        subprocess.run(["git", "worktree", "add", "--force", "--detach", str(tree), commit], cwd=ROOT, check=True,
                       capture_output=True)
    return tree


def contender(tree: Path, topic: str, total: int, protocol: str | None = None) -> Any:
    """``run(keyspace) -> (rate, info)`` running the revision in ``tree`` in a child process (``protocol``: its
    write protocol, for a revision that has them; None: its default)."""

    def run(ks: str) -> tuple[float, dict[str, Any]]:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        args = [topic, ks, str(total)] + ([protocol] if protocol else [])
        done = subprocess.run([sys.executable, __file__, *args], cwd=tree, env=env, capture_output=True, text=True,
                              timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(f"the revision in {tree} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        return result["rate"], {"cpu_us": result["cpu_us"], "verified": result["verified"]}

    return run


def _main(topic: str, ks: str, total: int, protocol: str | None) -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)
    import rxcqrs
    from benchmarks import cart  # the revision's (its checkout is first on the path)
    from rxcqrs.cassandra import connect

    if not Path(rxcqrs.__file__).resolve().is_relative_to(Path.cwd().resolve()):
        raise SystemExit(f"rxcqrs was imported from {rxcqrs.__file__}, not from the revision in {Path.cwd()}")
    verify, marks = cart.verify, {}

    def timed_verify(*args: Any, **kwargs: Any) -> Any:
        marks["cpu"] = time.process_time()
        return verify(*args, **kwargs)

    cart.verify = timed_verify
    cart._wait = _todays_wait()  # how today's contenders find the end of a run
    session = connect()
    try:
        started = time.process_time()
        options = {"protocol": protocol} if protocol else {}
        rate, info = cart.rxcqrs_mode(session, topic, ks, total, "batched", **options)
        cpu_us = info.get("cpu_us")
        if cpu_us is None:
            cpu_us = round((marks.get("cpu", time.process_time()) - started) / total * 1e6, 1)
        print(json.dumps({"rate": rate, "cpu_us": cpu_us, "verified": bool(info["verified"])}))
    finally:
        session.cluster.shutdown()


def _todays_wait() -> Callable[..., None]:
    """Today's :func:`benchmarks.waiting.wait_for`, loaded from its file (``benchmarks`` is the revision's), woken
    by every commit of the revision's ``Committer`` (as today's ``Committer.progress`` wakes it)."""
    spec = importlib.util.spec_from_file_location("_todays_waiting", Path(__file__).resolve().parent / "waiting.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from rxcqrs.kafka import committer  # the revision's

    original = getattr(committer.Committer, "_committed_now", None)
    if original is None:
        return module.wait_for  # type: ignore[no-any-return]
    commits = threading.Condition()

    def committed_now(self: Any, offsets: Any) -> None:
        original(self, offsets)
        with commits:
            commits.notify_all()

    setattr(committer.Committer, "_committed_now", committed_now)  # noqa: B010 (the revision's class)
    return lambda condition, timeout, changes=None: module.wait_for(condition, timeout, changes or commits)


if __name__ == "__main__":
    here = Path(__file__).resolve().parent  # its modules are today's, not the revision's
    sys.path[:] = [entry for entry in sys.path if not entry or Path(entry).resolve() != here]
    _main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
