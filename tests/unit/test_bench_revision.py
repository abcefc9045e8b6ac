"""``--against REV`` with a revision that does not exist says so in one line."""

from __future__ import annotations

import pytest

from benchmarks import revision


def test_an_unknown_revision_is_one_clear_line() -> None:
    with pytest.raises(SystemExit, match="--against no-such-rev: no such commit in this repository"):
        revision.checkout("no-such-rev")
