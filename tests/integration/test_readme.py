"""The README's Python examples run exactly as written, twice in a row on the same servers (a second run
finds the first run's topics, tables and committed offsets, and still finishes)."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest


def example(title: str) -> str:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    found = re.search(rf"## {re.escape(title)}\n.*?```python\n(.*?)```", readme, re.S)
    assert found, f"no python example under '## {title}'"
    return found.group(1)


def run_twice(code: str, capsys: Any) -> list[str]:
    outputs = []
    for _ in range(2):
        namespace: dict[str, object] = {"__name__": "readme_example"}
        exec(compile(code, "README.md", "exec", dont_inherit=True), namespace)  # (no __future__ annotations)
        outputs.append(capsys.readouterr().out)
    return outputs


@pytest.mark.parametrize("title", ["A first flow", "Your own aggregate", "The event stream", "Composing a flow",
                                   "Kafka to Kafka, in batches"])
def test_the_readme_examples_run_as_written_twice(title: str, servers: Any, capsys: Any) -> None:
    for out in run_twice(example(title), capsys):
        metrics = ast.literal_eval(out.strip().splitlines()[0])
        assert metrics["committed"] == 100 and metrics["state"] == "stopped", out
        if title == "Composing a flow":
            assert "4950 transferred" in out
        if title == "The event stream":
            assert out.strip().splitlines()[1:] == ["67 Voted(choice='yes') votes Tally(votes={'no': 33, 'yes': 34})",
                                                    "67", "Row(yes=34, no=33)"], out
        if title == "Your own aggregate":
            assert out.strip().splitlines()[1] == \
                "Account(balance=100) ['overdraft'] [Opened(), Deposited(amount=100)]", out


def test_the_registry_example_runs_as_written_twice(rxcqrs_registry: str, capsys: Any) -> None:
    """The example's URL is the default one, which the fixture started."""
    assert rxcqrs_registry == "http://127.0.0.1:8081/apis/ccompat/v7"
    for out in run_twice(example("Schemas in a registry"), capsys):
        assert out.strip().splitlines() == ["[{'sensor': 'a', 'value': 7, 'unit': 'C'}, "
                                            "{'sensor': 'b', 'value': 8, 'unit': 'K'}]", "True"], out


def test_the_tracing_example_runs_as_written_twice(servers: Any, capsys: Any) -> None:
    for out in run_twice(example("Tracing a command"), capsys):
        metrics, names = out.strip().splitlines()
        assert ast.literal_eval(metrics)["committed"] == 100, out
        assert names == "['map_value', 'process pings'] {'0af7651916cd43dd8448eb211c80319c'}", out
