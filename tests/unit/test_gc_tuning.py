"""The young-generation GC threshold: set once per process by the application (cart consume, make bench), from
its flag, environment or config file; bad values are one clear line."""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path
from typing import Any, Iterator

import pytest

from rxcqrs.config import load_config
from rxcqrs.exceptions import ConfigError
from rxcqrs.gc_tuning import set_young_threshold, young_threshold


@pytest.fixture(autouse=True)
def kept_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_the_young_threshold_is_set_and_the_older_ones_kept() -> None:
    gc.set_threshold(700, 11, 12)
    assert set_young_threshold(5000) == 700
    assert gc.get_threshold() == (5000, 11, 12)
    assert young_threshold() == 5000
    assert set_young_threshold(0) == 5000  # 0: as it is
    assert gc.get_threshold() == (5000, 11, 12)


@pytest.mark.parametrize("bad", [-1, 2.5, True, "100"])
def test_a_bad_threshold_is_refused(bad: Any) -> None:
    with pytest.raises(ConfigError, match="whole number of objects >= 0"):
        set_young_threshold(bad)


def test_the_threshold_comes_from_the_file_the_environment_or_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "rxcqrs.toml"
    path.write_text("[process]\ngc_threshold = 3000\n")
    assert load_config(environ={}).gc_threshold is None
    assert load_config(str(path), environ={}).gc_threshold == 3000
    assert load_config(str(path), environ={"RXCQRS_GC_THRESHOLD": "0"}).gc_threshold == 0
    assert load_config(str(path), environ={"RXCQRS_GC_THRESHOLD": "0"}, gc_threshold=9).gc_threshold == 9


@pytest.mark.parametrize(("source", "value"), [("file", '"many"'), ("file", "-5"), ("file", "true"), ("file", "2.5"),
                                               ("env", "-5"), ("env", "lots")])
def test_a_bad_threshold_in_the_file_or_the_environment_names_where(tmp_path: Path, source: str, value: str) -> None:
    path = tmp_path / "rxcqrs.toml"
    path.write_text(f"[process]\ngc_threshold = {value}\n" if source == "file" else "")
    where = "RXCQRS_GC_THRESHOLD" if source == "env" else r"\[process\] gc_threshold in"
    with pytest.raises(ConfigError, match=f"{where}.*whole number of objects >= 0"):
        load_config(str(path), environ={"RXCQRS_GC_THRESHOLD": value} if source == "env" else {})


def test_an_unknown_process_setting_is_named(tmp_path: Path) -> None:
    path = tmp_path / "rxcqrs.toml"
    path.write_text("[process]\ngc_treshold = 3000\n")
    with pytest.raises(ConfigError, match=r"\[process\] takes gc_threshold, got \['gc_treshold'\]"):
        load_config(str(path), environ={})


@pytest.mark.parametrize(("flags", "expected"), [([], 20_000), (["--gc-threshold", "1234"], 1234),
                                                 (["--gc-threshold", "0"], 700)])
def test_cart_consume_runs_with_its_threshold(monkeypatch: pytest.MonkeyPatch, flags: list[str],
                                              expected: int) -> None:
    from rxcqrs.examples.shoppingcart import cli

    monkeypatch.delenv("RXCQRS_GC_THRESHOLD", raising=False)
    monkeypatch.delenv("RXCQRS_CONFIG", raising=False)
    gc.set_threshold(700, 10, 10)
    seen: list[int] = []
    monkeypatch.setattr(cli, "_session", lambda args: contextlib.nullcontext(None))
    monkeypatch.setattr(cli, "_consume", lambda args, session: seen.append(gc.get_threshold()[0]) or 0)
    assert cli.main(["consume", *flags]) == 0
    assert seen == [expected]


def test_a_bad_flag_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from rxcqrs.examples.shoppingcart import cli

    with pytest.raises(SystemExit) as stop:
        cli.main(["consume", "--gc-threshold", "-3"])
    assert stop.value.code == 2
    assert "--gc-threshold" in capsys.readouterr().err
