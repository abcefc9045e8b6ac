"""`rxcqrs services` with the real tools it drives: Maven resolving against Maven Central, the JDKs of this
machine (no servers needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rxcqrs.exceptions import MavenError
from rxcqrs.services.jars import fetch_jars, pinned_version
from rxcqrs.services.java import find_java21


def test_an_unresolvable_artifact_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rxcqrs.services.jars as fetch

    pom = fetch.pom_text("kafka").replace(f"<kafka.version>{pinned_version('kafka')}</kafka.version>",
                                          "<kafka.version>0.0.404</kafka.version>")
    monkeypatch.setattr(fetch, "pom_text", lambda server: pom)
    with pytest.raises(MavenError, match="kafka_2.13") as info:
        fetch_jars("kafka", tmp_path / "jars")
    assert "0.0.404" in str(info.value)


def test_the_registry_finds_the_jdk_beside_17_by_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nowhere"))
    jdk25 = Path("/usr/lib/jvm/temurin-25-jdk-amd64/bin/java")
    if not jdk25.exists():
        pytest.skip("this machine's image has no Temurin 25 beside JDK 17")
    assert "25" in find_java21()
