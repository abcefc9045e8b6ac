"""One place to import the public API: every name in ``rxcqrs.__all__`` comes from ``rxcqrs`` itself."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import rxcqrs


@pytest.mark.parametrize("name", rxcqrs.__all__)
def test_every_public_name_is_importable_from_the_top(name: str) -> None:
    value = getattr(rxcqrs, name)
    home = rxcqrs._HOME.get(name)
    if home is not None:
        assert value is getattr(importlib.import_module(home), name)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'KafkaSauce'"):
        rxcqrs.KafkaSauce  # noqa: B018


def test_importing_rxcqrs_does_not_import_the_clients() -> None:
    code = "import sys, rxcqrs; print(sorted(m for m in ('kafka', 'cassandra', 'confluent_kafka') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_old_name_still_works_for_a_release_and_says_what_to_use() -> None:
    from rxcqrs.kafka.committer import Committer

    with pytest.warns(DeprecationWarning, match="records_committed"):
        assert rxcqrs.Committer is Committer  # type: ignore[attr-defined]
    assert "Committer" not in rxcqrs.__all__


def test_every_operator_of_the_facade_is_exported_from_the_top() -> None:
    import rxcqrs.operators as operators

    for_stage_authors = {"Branch", "Spy", "batch_aware", "takes_batches"}  # return types and helpers stay there
    assert set(operators.__all__) - for_stage_authors <= set(rxcqrs.__all__)
