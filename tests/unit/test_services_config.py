"""`rxcqrs services` refuses bad set-ups with clear errors (no servers needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rxcqrs.exceptions import ConfigError, JavaNotFoundError, MavenError
from rxcqrs.services import ServicesSettings
from rxcqrs.services.jars import fetch_jars, pinned_version
from rxcqrs.services.java import find_java17


def test_ports_are_validated() -> None:
    with pytest.raises(ConfigError, match="kafka_port"):
        ServicesSettings.from_env({"RXCQRS_KAFKA_PORT": "ninety"})
    with pytest.raises(ConfigError, match="1..65535"):
        ServicesSettings(kafka_port=70000)
    with pytest.raises(ConfigError, match="must differ"):
        ServicesSettings(kafka_port=9042)


def test_a_java_that_is_not_17_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "java"
    fake.write_text('#!/bin/sh\necho \'openjdk version "25.0.1" 2025-10-21\' >&2\n')
    fake.chmod(0o755)
    with pytest.raises(JavaNotFoundError, match="Java 25"):
        find_java17(str(fake))
    with pytest.raises(JavaNotFoundError, match="not runnable"):
        find_java17(str(tmp_path / "missing"))


def test_missing_maven_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MavenError, match="Maven"):
        fetch_jars("kafka", tmp_path / "jars")


def test_an_unresolvable_artifact_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rxcqrs.services.jars as fetch

    pom = fetch.pom_text("kafka").replace(f"<kafka.version>{pinned_version('kafka')}</kafka.version>",
                                          "<kafka.version>0.0.404</kafka.version>")
    monkeypatch.setattr(fetch, "pom_text", lambda server: pom)
    with pytest.raises(MavenError, match="kafka_2.13") as info:
        fetch_jars("kafka", tmp_path / "jars")
    assert "0.0.404" in str(info.value)


def test_cli_reports_errors_on_stderr_with_exit_code_1(tmp_path: Path) -> None:
    env = {**os.environ, "RXCQRS_HOME": str(tmp_path), "RXCQRS_JAVA": str(tmp_path / "nojava"),
           "RXCQRS_KAFKA_PORT": "1", "RXCQRS_KAFKA_CONTROLLER_PORT": "2"}
    out = subprocess.run([sys.executable, "-m", "rxcqrs.cli", "services", "up", "kafka"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 1
    assert out.stderr.startswith("rxcqrs: error:") and "JDK 17" in out.stderr or "in use" in out.stderr
