"""Connection settings from the file, the environment and the flags, in rising order (no servers needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rxcqrs.config import load_config
from rxcqrs.exceptions import ConfigError

TOML = """
[kafka]
bootstrap_servers = "file1:9092,file2:9092"
backend = "confluent"
security_protocol = "SASL_SSL"
[cassandra]
contact_points = "10.0.0.1,10.0.0.2:9142"
local_dc = "file-dc"
consistency = "QUORUM"
serial_consistency = "SERIAL"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> str:
    path = tmp_path / "rxcqrs.toml"
    path.write_text(TOML)
    return str(path)


def test_the_file_alone_reaches_both_clients(config_file: str) -> None:
    config = load_config(config_file, environ={})
    cassandra = config.cassandra()
    assert (tuple(cassandra.contact_points), cassandra.port) == (("10.0.0.1", "10.0.0.2"), 9142)
    assert (cassandra.local_dc, cassandra.consistency, cassandra.serial_consistency) == ("file-dc", "QUORUM", "SERIAL")
    assert config.kafka_bootstrap == "file1:9092,file2:9092" and config.kafka_backend == "confluent"
    assert config.kafka_options == {"security_protocol": "SASL_SSL"}


def test_the_environment_beats_the_file_and_the_flags_beat_both(config_file: str) -> None:
    env = {"RXCQRS_CASSANDRA_LOCAL_DC": "env-dc", "RXCQRS_CASSANDRA_CONSISTENCY": "local_one",
           "RXCQRS_CASSANDRA_HOSTS": "10.1.1.1", "RXCQRS_KAFKA_BOOTSTRAP": "env:9092"}
    from_env = load_config(config_file, environ=env).cassandra()
    assert (from_env.local_dc, from_env.consistency, from_env.serial_consistency) == ("env-dc", "LOCAL_ONE", "SERIAL")
    assert tuple(from_env.contact_points) == ("10.1.1.1",)
    flags = load_config(config_file, environ=env, local_dc="flag-dc", consistency="each_quorum",
                        serial_consistency="local_serial", bootstrap_servers="flag:9092")
    cassandra = flags.cassandra()
    assert (cassandra.local_dc, cassandra.consistency, cassandra.serial_consistency) == \
        ("flag-dc", "EACH_QUORUM", "LOCAL_SERIAL")
    assert flags.kafka_bootstrap == "flag:9092"


def test_defaults_are_right_on_a_cluster() -> None:
    cassandra = load_config(environ={}).cassandra()
    assert (cassandra.local_dc, cassandra.consistency, cassandra.serial_consistency) == \
        ("datacenter1", "LOCAL_QUORUM", "LOCAL_SERIAL")


def test_a_bad_level_names_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match="consistency must be one of"):
        load_config(environ={}, consistency="MOST").cassandra()


def test_merge_partitions_from_the_file_the_environment_and_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "rxcqrs.toml"
    path.write_text("[cassandra]\nmerge_partitions = 4\n")
    assert load_config(environ={}).merge_partitions == 10
    assert load_config(str(path), environ={}).merge_partitions == 4
    assert "merge_partitions" not in load_config(str(path), environ={}).cassandra_options  # not a driver option
    assert load_config(str(path), environ={"RXCQRS_MERGE_PARTITIONS": "1"}).merge_partitions == 1
    assert load_config(str(path), environ={"RXCQRS_MERGE_PARTITIONS": "1"}, merge_partitions=6).merge_partitions == 6


def test_atomic_batches_from_the_file_the_environment_and_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "rxcqrs.toml"
    path.write_text("[cassandra]\natomic_batches = false\n")
    assert load_config(environ={}).atomic_batches is True
    assert load_config(str(path), environ={}).atomic_batches is False
    assert "atomic_batches" not in load_config(str(path), environ={}).cassandra_options  # not a driver option
    assert load_config(str(path), environ={"RXCQRS_ATOMIC_BATCHES": "true"}).atomic_batches is True
    assert load_config(str(path), environ={"RXCQRS_ATOMIC_BATCHES": "true"}, atomic_batches=False).atomic_batches \
        is False


@pytest.mark.parametrize(("setting", "source", "value", "allowed"), [
    ("atomic_batches", "file", '"yes"', "must be true or false"),
    ("atomic_batches", "file", "1", "must be true or false"),
    ("atomic_batches", "env", "maybe", "must be true or false"),
    ("merge_partitions", "file", '"many"', "whole number >= 1"), ("merge_partitions", "file", "0", "whole number >= 1"),
    ("merge_partitions", "env", "-3", "whole number >= 1"), ("merge_partitions", "env", "2.5", "whole number >= 1"),
])
def test_a_bad_cassandra_setting_names_where_and_what_is_allowed(tmp_path: Path, setting: str, source: str,
                                                                  value: str, allowed: str) -> None:
    path = tmp_path / "rxcqrs.toml"
    path.write_text(f"[cassandra]\n{setting} = {value}\n" if source == "file" else "")
    variable = f"RXCQRS_{setting.upper()}"
    env = {variable: value} if source == "env" else {}
    where = variable if source == "env" else rf"\[cassandra\] {setting} in"
    with pytest.raises(ConfigError, match=f"{where}.*{allowed}"):
        load_config(str(path), environ=env)


@pytest.mark.parametrize(("flags", "expected"), [
    ([], {"atomic_batches": True, "merge_partitions": 10, "write_protocol": "fenced"}),
    (["--no-atomic-batches", "--merge-partitions", "3", "--write-protocol", "conditional"],
     {"atomic_batches": False, "merge_partitions": 3, "write_protocol": "conditional"}),
    (["--atomic-batches"], {"atomic_batches": True, "events_topic": None}),
    (["--events-topic", "carts.events"], {"events_topic": "carts.events", "schema_registry": None}),
    (["--schema-registry", "http://127.0.0.1:8081/apis/ccompat/v7"],
     {"schema_registry": "http://127.0.0.1:8081/apis/ccompat/v7", "trace": None}),
    (["--trace", "console"], {"trace": "console"}),
])
def test_the_consumer_flags_reach_its_config(monkeypatch: pytest.MonkeyPatch, flags: list[str],
                                             expected: dict[str, object]) -> None:
    from rxcqrs.examples.shoppingcart import cli

    seen: list[object] = []
    monkeypatch.setattr(cli, "consume", lambda args: seen.append(args.config) or 0)
    assert cli.main(["consume", *flags]) == 0
    assert {name: getattr(seen[0], name) for name in expected} == expected


@pytest.mark.parametrize(("setting", "variable", "values"), [
    ("events_topic", "RXCQRS_EVENTS_TOPIC", ("from.file", "from.env", "flag")),
    ("schema_registry", "RXCQRS_SCHEMA_REGISTRY", ("http://file:8081", "https://env", "http://flag")),
])
def test_a_kafka_table_setting_comes_from_the_file_the_environment_or_the_flag(
        tmp_path: Path, setting: str, variable: str, values: tuple[str, str, str]) -> None:
    in_file, in_env, in_flag = values
    path = tmp_path / "rxcqrs.toml"
    path.write_text(f'[kafka]\n{setting} = "{in_file}"\n')
    assert getattr(load_config(str(path), environ={}), setting) == in_file
    assert setting not in load_config(str(path), environ={}).kafka_options  # not a client option
    assert getattr(load_config(str(path), environ={variable: in_env}), setting) == in_env
    assert getattr(load_config(str(path), environ={variable: in_env}, **{setting: in_flag}), setting) == in_flag
    assert getattr(load_config(None, environ={}), setting) is None


@pytest.mark.parametrize(("source", "value", "where"), [("file", '"bad topic!"', r"\[kafka\] events_topic in"),
                                                        ("file", "3", r"\[kafka\] events_topic in"),
                                                        ("env", "a/b", "RXCQRS_EVENTS_TOPIC")])
def test_a_bad_events_topic_is_one_line_naming_where(tmp_path: Path, source: str, value: str, where: str) -> None:
    path = tmp_path / "rxcqrs.toml"
    path.write_text(f"[kafka]\nevents_topic = {value}\n" if source == "file" else "")
    env = {"RXCQRS_EVENTS_TOPIC": value} if source == "env" else {}
    with pytest.raises(ConfigError, match=f"{where}.*is not a Kafka topic name"):
        load_config(str(path), environ=env)


@pytest.mark.parametrize(("source", "value", "where"), [("file", '"registry:8081"', r"\[kafka\] schema_registry in"),
                                                        ("file", "8081", r"\[kafka\] schema_registry in"),
                                                        ("env", "ftp://x", "RXCQRS_SCHEMA_REGISTRY"),
                                                        ("flag", "localhost", "--schema-registry")])
def test_a_bad_schema_registry_is_one_line_naming_where(tmp_path: Path, source: str, value: str, where: str) -> None:
    path = tmp_path / "rxcqrs.toml"
    path.write_text(f"[kafka]\nschema_registry = {value}\n" if source == "file" else "")
    env = {"RXCQRS_SCHEMA_REGISTRY": value} if source == "env" else {}
    with pytest.raises(ConfigError, match=f"{where}.*is not an http\\(s\\) URL") as raised:
        load_config(str(path), environ=env, schema_registry=value if source == "flag" else None)
    assert "\n" not in str(raised.value)


def test_tracing_comes_from_the_file_the_environment_or_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "rxcqrs.toml"
    path.write_text('[tracing]\nexporter = "otlp"\nendpoint = "http://collector:4318/v1/traces"\n')
    loaded = load_config(str(path), environ={})
    assert (loaded.trace, loaded.trace_endpoint) == ("otlp", "http://collector:4318/v1/traces")
    assert load_config(str(path), environ={"RXCQRS_TRACE": "console"}).trace == "console"
    assert load_config(str(path), environ={"RXCQRS_TRACE": "otlp"}, trace="console").trace == "console"
    assert load_config(None, environ={}).trace is None


@pytest.mark.parametrize(("text", "env", "where"), [
    ('[tracing]\nexporter = "jaeger"\n', {}, r"\[tracing\] exporter in .*console or otlp"),
    ("", {"RXCQRS_TRACE": "zipkin"}, "RXCQRS_TRACE: .*console or otlp"),
    ('[tracing]\nexporter = "otlp"\nsampler = 0.1\n', {}, r"\[tracing\] takes exporter and endpoint"),
])
def test_a_bad_tracing_setting_is_one_line_naming_where(tmp_path: Path, text: str, env: dict[str, str],
                                                        where: str) -> None:
    path = tmp_path / "rxcqrs.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=where) as raised:
        load_config(str(path), environ=env)
    assert "\n" not in str(raised.value)
