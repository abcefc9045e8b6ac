"""Find a JDK 17 ``java`` for Kafka and Cassandra (Cassandra 5.0 runs on 11/17 only, Kafka 4.x needs 17+), and a
JDK 21+ for the schema registry (Apicurio Registry 3)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from rxcqrs.exceptions import JavaNotFoundError

__all__ = ["find_java17", "find_java21", "java_major_version"]

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


def _candidates(explicit: str | None) -> list[str]:
    found: list[str] = []
    if explicit:
        return [explicit]
    if os.environ.get("JAVA_HOME"):
        found.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        found += [str(p / "bin" / "java") for p in sorted(jvm.iterdir()) if "17" in p.name]
    on_path = shutil.which("java")
    if on_path:
        found.append(on_path)
    return found


def find_java17(explicit: str | None = None) -> str:
    """Return a ``java`` binary of major version 17, or raise :class:`JavaNotFoundError` saying what was tried."""
    tried = []
    for java in _candidates(explicit):
        major = java_major_version(java)
        tried.append(f"{java} ({'not runnable' if major is None else f'Java {major}'})")
        if major == 17:
            return java
    raise JavaNotFoundError(
        "a JDK 17 is required to run Kafka 4.x and Cassandra 5.0 (Cassandra cannot start on Java 21+); tried: "
        + (", ".join(tried) or "nothing: no JAVA_HOME, no /usr/lib/jvm/*17*, no java on PATH")
        + ". Install openjdk-17 or set RXCQRS_JAVA to a JDK 17 java binary.")


def find_java21(explicit: str | None = None) -> str:
    """Return a ``java`` binary of major version 21 or newer: ``explicit`` (``RXCQRS_REGISTRY_JAVA``), else
    ``JAVA_HOME`` if new enough, else one under ``/usr/lib/jvm``, else ``java`` on the PATH; raise
    :class:`JavaNotFoundError` naming what was found."""
    if explicit:
        candidates = [explicit]
    else:
        candidates = [str(Path(os.environ["JAVA_HOME"]) / "bin" / "java")] if os.environ.get("JAVA_HOME") else []
        jvm = Path("/usr/lib/jvm")
        if jvm.is_dir():
            candidates += [str(p / "bin" / "java") for p in sorted(jvm.iterdir(), reverse=True)
                           if (p / "bin" / "java").exists()]
        on_path = shutil.which("java")
        if on_path:
            candidates.append(on_path)
    tried = []
    for java in dict.fromkeys(candidates):
        major = java_major_version(java)
        tried.append(f"{java} ({'not runnable' if major is None else f'Java {major}'})")
        if major is not None and major >= 21:
            return java
    raise JavaNotFoundError(
        "the schema registry (Apicurio Registry 3) needs Java 21 or newer; found: "
        + (", ".join(tried) or "nothing: no JAVA_HOME, no /usr/lib/jvm/*, no java on PATH")
        + ". Install a JDK 21+ (e.g. openjdk-21 or Temurin) or set RXCQRS_REGISTRY_JAVA to its java binary.")
