"""Property-based tests of the commit gate and of split tickets: any interleaving of acks over branches and
partitions never lets a commit pass a record that is not acked by every branch, and everything acked is
eventually committed."""

from __future__ import annotations

import threading
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rxcqrs.acks import Ticket
from rxcqrs.commit import CommitGate
from rxcqrs.exceptions import OffsetOrderError
from rxcqrs.messages import TopicPartition

TPS = [TopicPartition("t", p) for p in range(3)]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[TopicPartition, list[int]], int, list[tuple[int, int, int]], list[int]]:
    """Per partition increasing offsets (with gaps, as compaction/transactions leave), a branch count, an ack
    order over (partition, record, branch), and the points where the poll thread commits."""
    offsets = {}
    for tp in TPS:
        gaps = draw(st.lists(st.integers(1, 3), min_size=0, max_size=12))
        start = draw(st.integers(0, 50))
        offs, cur = [], start
        for gap in gaps:
            offs.append(cur)
            cur += gap
        offsets[tp] = offs
    branches = draw(st.integers(1, 3))
    acks = [(p, i, b) for p, tp in enumerate(TPS) for i in range(len(offsets[tp])) for b in range(branches)]
    order = draw(st.permutations(acks))
    commits = draw(st.lists(st.integers(0, max(len(order), 1)), max_size=10))
    return offsets, branches, list(order), commits


def _not_fully_acked_min(offsets: list[int], acked: dict[int, set[int]], branches: int) -> int | None:
    for off in offsets:
        if len(acked.get(off, set())) < branches:
            return off
    return None


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_commits_never_pass_a_record_not_acked_by_every_branch(scenario) -> None:  # type: ignore[no-untyped-def]
    offsets, branches, order, commit_points = scenario
    gate = CommitGate()
    tickets: dict[tuple[int, int], list[Ticket]] = {}
    for p, tp in enumerate(TPS):
        gate.assign(tp)
        for i, off in enumerate(offsets[tp]):
            epoch = gate.emit(tp, off)
            parent = Ticket(partial(gate.settle, tp, epoch, off))
            tickets[(p, i)] = parent.split(branches)
    acked: dict[TopicPartition, dict[int, set[int]]] = {tp: {} for tp in TPS}
    committed: dict[TopicPartition, int] = {}

    def commit() -> None:
        offs = gate.to_commit()
        for tp, off in offs.items():
            # the invariant: every emitted offset below the commit is acked by all branches
            limit = _not_fully_acked_min(offsets[tp], acked[tp], branches)
            assert limit is None or off <= limit, (tp, off, limit)
            assert off >= committed.get(tp, -1)
        gate.mark_committed(offs)
        committed.update(offs)

    points = set(commit_points)
    for step, (p, i, b) in enumerate(order):
        if step in points:
            commit()
        tickets[(p, i)][b].ack()
        acked[TPS[p]].setdefault(offsets[TPS[p]][i], set()).add(b)
    commit()
    # everything acked is eventually committed: one past the last emitted offset
    for tp in TPS:
        if offsets[tp]:
            assert committed[tp] == offsets[tp][-1] + 1
    assert gate.in_flight() == 0


@settings(max_examples=100, deadline=None)
@given(scenarios(), st.integers(0, 2))
def test_a_nack_holds_the_watermark_and_stale_epochs_are_ignored(scenario, failing: int) -> None:  # type: ignore[no-untyped-def]
    offsets, branches, order, _ = scenario
    tp = TPS[failing]
    if not offsets[tp]:
        return
    stale: list[int] = []
    gate = CommitGate(on_stale=lambda: stale.append(1))
    gate.assign(tp)
    epochs = [gate.emit(tp, off) for off in offsets[tp]]
    bad = len(offsets[tp]) // 2
    for i, off in enumerate(offsets[tp]):
        gate.settle(tp, epochs[i], off, RuntimeError("x") if i == bad else None)
    marks = gate.to_commit()
    expected = offsets[tp][bad - 1] + 1 if bad > 0 else None
    assert marks.get(tp) == expected
    assert gate.failures()[0].offset == offsets[tp][bad]
    # a rewind starts a new epoch at the watermark; late settles of the old epoch change nothing
    position = gate.rewind(tp)
    assert position == (expected if expected is not None else offsets[tp][bad])  # seek target <= failed offset
    assert not gate.settle(tp, epochs[bad], offsets[tp][bad], None)
    assert not gate.settle(tp, epochs[0], offsets[tp][0], None)  # settled already, and of an old epoch
    assert gate.failures() == []
    assert gate.stale == len(stale) == 2  # each ignored settle is counted and reported once


def test_acks_from_many_threads_commit_exactly_the_end() -> None:
    gate = CommitGate()
    tp = TPS[0]
    gate.assign(tp)
    children = []
    for off in range(2000):
        epoch = gate.emit(tp, off)
        children.append(Ticket(partial(gate.settle, tp, epoch, off)).split(2))
    barrier = threading.Barrier(4)

    def ack(branch: int, part: int) -> None:
        barrier.wait()
        for kids in children[part::2]:
            kids[branch].ack()
            kids[branch].ack()  # a duplicate callback must not double count

    threads = [threading.Thread(target=ack, args=(b, part)) for b in range(2) for part in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gate.to_commit() == {tp: 2000} and gate.in_flight() == 0


def test_emitting_out_of_order_or_unassigned_is_an_error() -> None:
    gate = CommitGate()
    with pytest.raises(OffsetOrderError):
        gate.emit(TPS[0], 1)
    gate.assign(TPS[0])
    gate.emit(TPS[0], 5)
    with pytest.raises(OffsetOrderError):
        gate.emit(TPS[0], 5)
    gate.mark_committed({TPS[0]: 3})
    with pytest.raises(OffsetOrderError):
        gate.mark_committed({TPS[0]: 2})


def test_revoke_returns_the_done_watermark_and_forgets_the_partition() -> None:
    gate = CommitGate()
    tp = TPS[1]
    epoch = gate.assign(tp)
    for off in range(3):
        gate.emit(tp, off)
    gate.settle(tp, epoch, 0, None)
    gate.settle(tp, epoch, 2, None)
    assert gate.revoke([tp]) == {tp: 1}
    assert gate.in_flight() == 0 and not gate.settle(tp, epoch, 1, None)


@st.composite
def runs_scenarios(draw: st.DrawFn) -> tuple[list[list[int]], list[int], list[int], int]:
    """One partition's increasing offsets (with gaps) cut into runs (batches) of 1..5, an order in which the
    runs settle, the points where the poll thread commits, and a window level to wake at."""
    gaps = draw(st.lists(st.integers(1, 3), min_size=1, max_size=30))
    offsets, cur = [], draw(st.integers(0, 20))
    for gap in gaps:
        offsets.append(cur)
        cur += gap
    runs, i = [], 0
    while i < len(offsets):
        size = draw(st.integers(1, 5))
        runs.append(offsets[i:i + size])
        i += size
    order = draw(st.permutations(range(len(runs))))
    commits = draw(st.lists(st.integers(0, len(runs)), max_size=6))
    return runs, list(order), commits, draw(st.integers(0, len(offsets)))


@settings(max_examples=300, deadline=None)
@given(runs_scenarios())
def test_a_run_is_settled_whole_and_commits_never_pass_a_record_of_an_unsettled_run(scenario) -> None:  # type: ignore[no-untyped-def]
    runs, order, commit_points, wake_level = scenario
    tp = TPS[0]
    woken: list[int] = []
    gate = CommitGate(on_change=lambda: woken.append(gate.in_flight()))
    gate.wake_when(in_flight=wake_level)
    gate.assign(tp)
    epoch = 0
    for run in runs:
        epoch = gate.emit(tp, run[0], last=run[-1], records=len(run)) if len(run) > 1 else gate.emit(tp, run[0])
    total = sum(len(r) for r in runs)
    assert gate.in_flight() == total  # the window counts records, not runs
    settled: set[int] = set()
    in_flight = total
    for step, index in enumerate(order):
        if step in commit_points:
            mark = gate.to_commit().get(tp)
            unsettled = [runs[i][0] for i in range(len(runs)) if i not in settled]
            assert mark is None or not unsettled or mark <= min(unsettled)
            if mark is not None:  # everything below the mark is a record of a settled run
                assert all(i in settled for i, r in enumerate(runs) if r[-1] < mark)
        before = in_flight
        assert gate.settle(tp, epoch, runs[index][0], None)
        settled.add(index)
        in_flight -= len(runs[index])
        assert gate.in_flight() == in_flight
        # the poll thread is woken when in flight crosses its level (a run may jump over it) or reaches 0
        crossed = in_flight == 0 or before > wake_level >= in_flight
        assert woken == ([in_flight] if crossed else [])
        woken.clear()
    assert gate.to_commit() == {tp: runs[-1][-1] + 1} and gate.acked == total


def test_a_nacked_run_fails_at_its_first_offset_and_a_rewind_goes_back_to_it() -> None:
    gate = CommitGate()
    tp = TPS[0]
    epoch = gate.assign(tp)
    gate.emit(tp, 0, last=4, records=5)
    gate.emit(tp, 5, last=9, records=5)
    gate.settle(tp, epoch, 0, None)
    gate.settle(tp, epoch, 5, RuntimeError("one of them"))
    assert gate.to_commit() == {tp: 5} and gate.nacked == 5 and gate.in_flight() == 0
    assert gate.failures()[0].offset == 5
    assert gate.rewind(tp) == 5
    with pytest.raises(OffsetOrderError):
        gate.emit(tp, 7, last=6, records=1)  # a run that ends before it starts
