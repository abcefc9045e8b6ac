"""Find a JDK 17 ``java`` for Kafka and Cassandra (Cassandra 5.0 runs on 11/17 only, Kafka 4.x needs 17+), and a
JDK 21+ for the schema registry (Apicurio Registry 3)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from rxcqrs.exceptions import JavaNotFoundError

__all__ = ["find_java", "find_java17", "find_java21", "java_major_version"]

_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')


def java_major_version(java: str) -> int | None:
    """The major version ``java -version`` reports, or ``None`` if it cannot run."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION.search(out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def _candidates(explicit: str | None, jvm_dirs: Callable[[str], bool]) -> list[str]:
    """``explicit`` alone if given; else ``JAVA_HOME``, the JDKs under ``/usr/lib/jvm`` whose directory name
    ``jvm_dirs`` accepts (newest name first), and ``java`` on the PATH, without repeats."""
    if explicit:
        return [explicit]
    found: list[str] = []
    if os.environ.get("JAVA_HOME"):
        found.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        found += [str(p / "bin" / "java") for p in sorted(jvm.iterdir(), reverse=True)
                  if jvm_dirs(p.name) and (p / "bin" / "java").exists()]
    on_path = shutil.which("java")
    if on_path:
        found.append(on_path)
    return list(dict.fromkeys(found))


def find_java(accept: Callable[[int], bool], explicit: str | None, jvm_dirs: Callable[[str], bool],
              missing: Callable[[str], str]) -> str:
    """The first candidate ``java`` (see :func:`_candidates`) whose major version ``accept`` s; else
    :class:`JavaNotFoundError` with ``missing(what was found)``."""
    tried = []
    for java in _candidates(explicit, jvm_dirs):
        major = java_major_version(java)
        tried.append(f"{java} ({'not runnable' if major is None else f'Java {major}'})")
        if major is not None and accept(major):
            return java
    raise JavaNotFoundError(missing(", ".join(tried)))


def find_java17(explicit: str | None = None) -> str:
    """A ``java`` of major version 17 (``explicit``, else ``JAVA_HOME``, ``/usr/lib/jvm/*17*``, the PATH)."""
    return find_java(lambda major: major == 17, explicit, lambda name: "17" in name, lambda tried: (
        "a JDK 17 is required to run Kafka 4.x and Cassandra 5.0 (Cassandra cannot start on Java 21+); tried: "
        + (tried or "nothing: no JAVA_HOME, no /usr/lib/jvm/*17*, no java on PATH")
        + ". Install openjdk-17 or set RXCQRS_JAVA to a JDK 17 java binary."))


def find_java21(explicit: str | None = None) -> str:
    """A ``java`` of major version 21 or newer (``explicit``: ``RXCQRS_REGISTRY_JAVA``, else ``JAVA_HOME``,
    ``/usr/lib/jvm/*``, the PATH)."""
    return find_java(lambda major: major >= 21, explicit, lambda name: True, lambda tried: (
        "the schema registry (Apicurio Registry 3) needs Java 21 or newer; found: "
        + (tried or "nothing: no JAVA_HOME, no /usr/lib/jvm/*, no java on PATH")
        + ". Install a JDK 21+ (e.g. openjdk-21 or Temurin) or set RXCQRS_REGISTRY_JAVA to its java binary."))
