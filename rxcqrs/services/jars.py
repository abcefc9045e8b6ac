"""Fetch the server jars from Maven Central into the per-user jar cache, once per pinned version.

Each server has a pom kept in this package (``poms/<server>/pom.xml``); ``mvn dependency:copy-dependencies``
copies its runtime closure into ``<jars>/<server>-<hash of the pom>/``. A changed pom (a new pinned
version) gets a new directory, so it is fetched again; an unchanged one is never fetched twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator

from rxcqrs.exceptions import MavenError

__all__ = ["fetch_jars", "fetch_app", "pom_text", "pinned_version", "file_lock"]

_COMPLETE = ".complete"


def pom_text(server: str) -> str:
    return (resources.files("rxcqrs.services") / "poms" / server / "pom.xml").read_text()


def pinned_version(server: str) -> str:
    """The server version the pom pins (``<kafka.version>`` / ``<cassandra.version>``)."""
    match = re.search(rf"<{server}\.version>([^<]+)</{server}\.version>", pom_text(server))
    if not match:
        raise MavenError(f"the {server} pom pins no <{server}.version>")
    return match.group(1)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two checkouts never fetch or start the same server at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _failed_artifacts(output: str) -> list[str]:
    artifact = r"([\w.\-]+:[\w.\-]+:[\w.\-:]+)"
    names = re.findall(r"(?:Could not (?:find|resolve|transfer) artifact|Failure to find) " + artifact, output)
    names += re.findall(r"Could not resolve dependencies for project [^:]+:[^:]+:[^:]+:[^:]+: (.+?)(?:\n|$)",
                        output)
    return list(dict.fromkeys(names))


def _run_maven(cmd: list[str], what: str) -> None:
    """Run ``mvn`` (once more after a failure that names no artifact: a network hiccup); raise
    :class:`MavenError` with the failed artifacts and the output's tail."""
    env = {**os.environ, "MAVEN_OPTS": "-Xmx512m"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 and not _failed_artifacts(proc.stdout + proc.stderr):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        missing = _failed_artifacts(output)
        reason = f"could not resolve {', '.join(missing)}" if missing else "failed"
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise MavenError(f"Maven {reason} while fetching {what}:\n{tail}")


def _maven() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise MavenError("Maven (mvn) is needed once to fetch the servers from Maven Central; install it (Debian: "
                         "apt-get install maven) or put a filled jar cache at RXCQRS_JARS")
    return mvn


def _filled_once(target: Path, lock: Path, fill: Callable[[str, Path], str]) -> Path:
    """``target``, filled by ``fill(mvn, work)`` once (it returns the directory it filled under ``work`` and
    what to record in it): under a file lock, staged in a temporary directory, renamed into place whole."""
    if (target / _COMPLETE).exists():
        return target
    mvn = _maven()
    with file_lock(lock):
        if (target / _COMPLETE).exists():
            return target
        with tempfile.TemporaryDirectory(prefix=f"{target.name}-", dir=target.parent) as work:
            staging = Path(work) / "staging"
            (staging / _COMPLETE).parent.mkdir(parents=True, exist_ok=True)
            done = fill(mvn, staging)
            (staging / _COMPLETE).write_text(done + "\n")
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
    return target


def fetch_app(name: str, artifact: str, jar_cache: Path) -> Path:
    """Return the directory of an application published on Maven Central as one archive (``artifact``:
    ``group:artifact:version:tar.gz:classifier``), fetched and unpacked once into the jar cache."""
    import tarfile

    def fill(mvn: str, staging: Path) -> str:
        download = staging.parent / "download"
        _run_maven([mvn, "-B", "-q", "dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={download}"],
                   f"{name} ({artifact})")
        archives = list(download.glob("*.tar.gz"))
        if not archives:
            raise MavenError(f"Maven copied no archive for {name} ({artifact})")
        with tarfile.open(archives[0]) as archive:
            archive.extractall(staging, filter="data")
        return artifact

    return _filled_once(jar_cache / f"{name}-{artifact.split(':')[2]}", jar_cache / f".{name}.lock", fill)


def fetch_jars(server: str, jar_cache: Path, *, quiet: bool = True) -> Path:
    """Return the lib directory with every jar ``server`` needs, fetching it with Maven if needed."""
    pom = pom_text(server)
    digest = hashlib.sha256(pom.encode()).hexdigest()[:12]

    def fill(mvn: str, staging: Path) -> str:
        pom_path = staging.parent / "pom.xml"
        pom_path.write_text(pom)
        cmd = [mvn, "-B", "-f", str(pom_path), "dependency:copy-dependencies", "-DincludeScope=runtime",
               f"-DoutputDirectory={staging}"]
        if quiet:
            cmd.insert(2, "-q")
        _run_maven(cmd, f"the {server} jars (pom {server}-{digest})")
        jars = list(staging.glob("*.jar"))
        if not jars:
            raise MavenError(f"Maven copied no jars for {server}")
        return f"{len(jars)} jars"

    return _filled_once(jar_cache / f"{server}-{pinned_version(server)}-{digest}", jar_cache / f".{server}.lock",
                        fill)
