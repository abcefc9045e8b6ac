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
