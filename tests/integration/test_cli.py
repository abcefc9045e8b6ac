"""The command line: help everywhere, one line per error (what is wrong, what to do), no traceback, nothing
created before the input is known to be good."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import pytest

from rxcqrs.examples.shoppingcart.tuning import WINDOW


def rxcqrs(*args: str, env: dict[str, str] | None = None, shell_pipe: str | None = None
           ) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "rxcqrs.cli", *args]
    if shell_pipe:
        line = " ".join(f"'{a}'" for a in command) + f" | {shell_pipe}"
        return subprocess.run(line, shell=True, capture_output=True, text=True, timeout=180,
                              env={**os.environ, **(env or {})})
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env={**os.environ, **(env or {})})


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("args", [[], ["cart"], ["cart", "consume"], ["cart", "show"], ["cart", "project"],
                                  ["cart", "query"], ["services"], ["demo"]])
def test_every_command_has_help_with_defaults(args: list[str]) -> None:
    result = rxcqrs(*args, "--help")
    assert result.returncode == 0 and "usage: rxcqrs" in result.stdout, result.stderr
    if args[-1:] == ["consume"]:
        assert f"(default: {WINDOW})" in result.stdout and "--kafka-backend" in result.stdout
        assert "--no-prefetch" in result.stdout and "--no-batches" in result.stdout
        assert all(flag in result.stdout for flag in ("--merge-partitions", "--atomic-batches", "--no-atomic-batches",
                                                      "--events-topic"))


def test_version_and_verbose_anywhere() -> None:
    assert rxcqrs("--version").stdout.startswith("rxcqrs ")
    for args in (["-v", "cart", "show", "--help"], ["cart", "-v", "show", "--help"], ["cart", "show", "-v", "--help"]):
        assert rxcqrs(*args).returncode == 0


@pytest.mark.parametrize("args,flag", [
    (["cart", "produce", "--carts", "0"], "--carts"),
    (["cart", "produce", "--commands", "-10"], "--commands"),
    (["cart", "consume", "--stop-when-idle", "-1"], "--stop-when-idle"),
    (["cart", "consume", "--window", "0"], "--window"),
    (["cart", "consume", "--merge-partitions", "0"], "--merge-partitions"),
    (["cart", "show", "--cart", "not-a-uuid"], "--cart"),
    (["cart", "show", "--keyspace", "x; DROP KEYSPACE y"], "--keyspace"),
    (["cart", "consume", "--topic", "bad topic!"], "--topic"),
    (["cart", "consume", "--kafka-backend", "java"], "--kafka-backend"),
    (["cart", "query", "--owner", "not-a-uuid"], "--owner"),
    (["cart", "project", "--keyspace", "bad keyspace"], "--keyspace"),
])
def test_bad_values_are_refused_at_parse_time_naming_the_flag(args: list[str], flag: str) -> None:
    result = rxcqrs(*args)
    assert result.returncode == 2 and f"argument {flag}" in result.stderr and "Traceback" not in result.stderr


def test_a_bad_variable_is_named(servers: object) -> None:
    line = one_line_error(rxcqrs("cart", "show", env={"RXCQRS_CASSANDRA_PORT": "abc"}))
    assert "RXCQRS_CASSANDRA_PORT" in line and "'abc'" in line


@pytest.mark.parametrize("command", ["show", "duplicates", "compensate"])
def test_an_unknown_keyspace_is_one_line(command: str, servers: object) -> None:
    line = one_line_error(rxcqrs("cart", command, "--keyspace", "no_such_keyspace_here"))
    assert "'no_such_keyspace_here' does not exist" in line


def test_unreachable_servers_say_what_to_do() -> None:
    kafka = one_line_error(rxcqrs("cart", "produce", "--bootstrap-servers", "127.0.0.1:1", "--commands", "1"))
    assert "cannot reach Kafka at 127.0.0.1:1" in kafka and "rxcqrs services up" in kafka
    cassandra = one_line_error(rxcqrs("cart", "show", "--contact-points", "127.0.0.1:1"))
    assert "cannot connect to Cassandra at 127.0.0.1:1" in cassandra and "rxcqrs services up" in cassandra


def test_an_unknown_local_data_center_is_named_with_the_ones_there_are(servers: object) -> None:
    line = one_line_error(rxcqrs("cart", "show", "--local-dc", "dc-nowhere"))
    assert "'dc-nowhere'" in line and "datacenter1" in line and "--local-dc" in line


def test_a_missing_topic_ends_the_consumer_with_one_line(servers: object, keyspace: str) -> None:
    topic = f"missing.{uuid.uuid4().hex}"
    line = one_line_error(rxcqrs("cart", "consume", "--topic", topic, "--keyspace", keyspace, "--create-schema",
                                 "--stop-when-idle", "1"))
    assert f"'{topic}' does not exist" in line


def test_projecting_a_missing_stream_is_one_line(servers: object, keyspace: str) -> None:
    topic = f"missing.{uuid.uuid4().hex}"
    line = one_line_error(rxcqrs("cart", "project", "--events-topic", topic, "--keyspace", keyspace))
    assert f"'{topic}' does not exist" in line and "--events-topic" in line


def test_a_closed_pipe_is_not_an_error(servers: object, keyspace: str) -> None:
    result = rxcqrs("cart", "show", "--keyspace", "system_schema", shell_pipe="head -c 0")
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_config_file_settings_reach_the_clients(tmp_path: object, servers: object) -> None:
    from pathlib import Path

    config = Path(str(tmp_path)) / "rxcqrs.toml"
    config.write_text('[kafka]\nbootstrap_servers = "127.0.0.1:1"\n[cassandra]\ncontact_points = "127.0.0.1:1"\n')
    line = one_line_error(rxcqrs("cart", "show", "--config", str(config)))
    assert "127.0.0.1:1" in line
    bad = config.with_name("bad.toml")
    bad.write_text("[kafka\n")
    assert "not valid TOML" in one_line_error(rxcqrs("cart", "show", "--config", str(bad)))


def test_the_consumer_serves_its_figures_to_prometheus(topic_factory: Any, group_id: str, keyspace: str) -> None:
    import socket
    import urllib.request

    from tests.helpers import wait_until

    topic = topic_factory(2)
    assert rxcqrs("cart", "produce", "--topic", topic, "--carts", "5", "--commands", "300", "--partitions",
                  "2").returncode == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    consumer = subprocess.Popen([sys.executable, "-m", "rxcqrs.cli", "cart", "consume", "--topic", topic, "--group",
                                 group_id, "--keyspace", keyspace, "--create-schema", "--metrics-port", str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def scraped() -> str:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                return ""
            done = "rxcqrs_committed_total 300.0" in text and "rxcqrs_backlog 0.0" in text
            return text if done else ""

        text = wait_until(scraped, 120, "300 records committed and nothing left, as scraped")
        assert 'rxcqrs_lag{partition="0",topic="' + topic + '"} 0.0' in text and "rxcqrs_in_flight 0.0" in text
    finally:
        consumer.terminate()
        consumer.wait(60)
    assert consumer.returncode == 0, consumer.stdout.read() if consumer.stdout else ""
