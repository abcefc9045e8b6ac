"""An in-memory Kafka for fast unit tests and notebooks: a broker, a consumer and a producer.

They implement the subset of kafka-python's ``KafkaConsumer``/``KafkaProducer`` that rxcqrs uses, with the
same semantics where it matters (positions vs commits, pause/resume, per-partition order, rebalance
listeners that may be ``async``, callbacks on another thread). They are a fast tier, never a substitute
for the real-broker tests.
"""

from __future__ import annotations

import inspect
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from rxcqrs.messages import TopicPartition

__all__ = ["FakeBroker", "FakeConsumer", "FakeProducer", "FakeRecord", "FakeFuture", "UnknownTopicError"]


class UnknownTopicError(Exception):
    """A fake broker has no such topic (a real one answers UNKNOWN_TOPIC_OR_PARTITION; not retriable here)."""

    retriable = False


@dataclass(frozen=True)
class FakeRecord:
    """Shaped like ``kafka.consumer.fetcher.ConsumerRecord``."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class FakeFuture:
    """A minimal ``kafka.future.Future``: callbacks, ``get()``, awaitable once done."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self.value: Any = None
        self.exception: BaseException | None = None
        self._callbacks: list[Callable[[Any], None]] = []
        self._errbacks: list[Callable[[BaseException], None]] = []
        self._lock = threading.Lock()

    @property
    def is_done(self) -> bool:
        return self._done.is_set()

    def success(self, value: Any) -> None:
        with self._lock:
            self.value = value
            self._done.set()
            callbacks = list(self._callbacks)
        for cb in callbacks:
            cb(value)

    def failure(self, exc: BaseException) -> None:
        with self._lock:
            self.exception = exc
            self._done.set()
            errbacks = list(self._errbacks)
        for eb in errbacks:
            eb(exc)

    def add_callback(self, fn: Callable[..., None], *args: Any) -> "FakeFuture":
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(lambda v: fn(*args, v))
                return self
        if self.exception is None:
            fn(*args, self.value)
        return self

    def add_errback(self, fn: Callable[..., None], *args: Any) -> "FakeFuture":
        with self._lock:
            if not self._done.is_set():
                self._errbacks.append(lambda e: fn(*args, e))
                return self
        if self.exception is not None:
            fn(*args, self.exception)
        return self

    def get(self, timeout: float | None = None) -> Any:
        if not self._done.wait(timeout):
            raise TimeoutError("fake future not done")
        if self.exception is not None:
            raise self.exception
        return self.value

    def __await__(self) -> Any:
        if not self.is_done:
            yield self
        if self.exception is not None:
            raise self.exception
        return self.value


class FakeBroker:
    """Topics, partitions, committed offsets per group, and group membership with rebalances."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._arrived = threading.Condition(self._lock)
        self.topics: dict[str, list[list[FakeRecord]]] = {}
        self.committed: dict[str, dict[TopicPartition, int]] = defaultdict(dict)
        self.commit_log: list[tuple[str, dict[TopicPartition, int]]] = []
        self._members: dict[str, list["FakeConsumer"]] = defaultdict(list)
        self.owners: dict[tuple[str, TopicPartition], "FakeConsumer"] = {}  # (group, tp) -> member

    def create_topic(self, name: str, partitions: int = 1) -> None:
        with self._lock:
            self.topics.setdefault(name, [[] for _ in range(partitions)])

    def append(self, topic: str, value: bytes | None, key: bytes | None = None, partition: int | None = None,
               headers: Iterable[tuple[str, bytes]] = (), timestamp_ms: int | None = None) -> FakeRecord:
        """Append a record (like a producer's send); the topic must exist, as on a broker without
        auto-creation."""
        with self._lock:
            if topic not in self.topics:
                raise UnknownTopicError(f"topic {topic!r} does not exist on the fake broker")
            parts = self.topics[topic]
            if partition is None:
                partition = (hash(key) % len(parts)) if key is not None else sum(map(len, parts)) % len(parts)
            log = parts[partition]
            record = FakeRecord(topic, partition, len(log), timestamp_ms or int(time.time() * 1000), 0, key, value,
                                list(headers))
            log.append(record)
            self._arrived.notify_all()
            return record

    def records(self, topic: str) -> list[FakeRecord]:
        with self._lock:
            return [r for part in self.topics.get(topic, []) for r in part]

    def end_offset(self, tp: TopicPartition) -> int:
        with self._lock:
            return len(self.topics[tp.topic][tp.partition])

    def group_size(self, group_id: str) -> int:
        with self._lock:
            return len(self._members[group_id])

    # -- groups -------------------------------------------------------------------------------------------
    def join(self, member: "FakeConsumer") -> None:
        with self._lock:
            self._members[member.group_id].append(member)
            self._rebalance(member.group_id)

    def leave(self, member: "FakeConsumer") -> None:
        with self._lock:
            if member in self._members[member.group_id]:
                self._members[member.group_id].remove(member)
                self._rebalance(member.group_id)

    def rebalance(self, group_id: str) -> None:
        with self._lock:
            self._rebalance(group_id)

    def _rebalance(self, group_id: str) -> None:
        members = self._members[group_id]
        if not members:
            return
        topics = sorted(set().union(*(m.subscription for m in members)))
        tps = [TopicPartition(t, p) for t in topics for p in range(len(self.topics.get(t, [])))]
        targets: list[set[TopicPartition]] = [set() for _ in members]
        for i, tp in enumerate(tps):
            targets[i % len(members)].add(tp)
        for member, target in zip(members, targets, strict=True):
            member._target = target


class FakeConsumer:
    """Implements subscribe/poll/pause/resume/seek/commit/committed/highwater/close like kafka-python 3."""

    def __init__(self, broker: FakeBroker, *, group_id: str, auto_offset_reset: str = "earliest",
                 max_poll_records: int = 500, **_ignored: Any) -> None:
        self.broker = broker
        self.group_id = group_id
        self.auto_offset_reset = auto_offset_reset
        self.max_poll_records = max_poll_records
        self.subscription: set[str] = set()
        self._listener: Any = None
        self._assigned: set[TopicPartition] = set()
        self._target: set[TopicPartition] | None = None
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self.closed = False
        self.thread: threading.Thread | None = None  # the first thread that polled: nobody else may touch us
        self.polls = 0
        self.fail_commits = 0
        #: faults for the liveness tests: never receive an assignment; or hang in poll until interrupted
        self.never_assigned = False
        self.hang_polls = False
        self._interrupted = threading.Event()
        self.hanging = threading.Event()  # set once a poll hangs (hang_polls)

    def _owner_check(self) -> None:
        current = threading.current_thread()
        if self.thread is None:
            self.thread = current
        elif current is not self.thread:
            raise RuntimeError(f"FakeConsumer used from {current.name}, but it belongs to {self.thread.name}")

    def subscribe(self, topics: Sequence[str], listener: Any = None) -> None:
        self.subscription = set(topics)
        self._listener = listener
        self.broker.join(self)

    def partitions_for_topic(self, topic: str) -> set[int]:
        with self.broker._lock:
            return set(range(len(self.broker.topics.get(topic, []))))

    def group_size(self) -> int:
        return self.broker.group_size(self.group_id)

    def interrupt(self) -> None:
        """What the liveness watchdog does to a hung real client: the hanging call raises."""
        self._interrupted.set()

    def _call_listener(self, method: str, tps: set[TopicPartition]) -> None:
        if not self._listener or not tps:
            return
        result = getattr(self._listener, method)(set(tps))
        if inspect.iscoroutine(result):
            try:
                while True:
                    result.send(None)
            except StopIteration:
                pass

    def _apply_rebalance(self) -> None:
        """Like the group protocol: a partition moves only after its previous owner revoked it."""
        if self.never_assigned:
            return
        with self.broker._lock:
            target = self._target
        if target is None:
            return
        revoked = self._assigned - target
        if revoked:
            self._call_listener("on_partitions_revoked", revoked)
            with self.broker._lock:
                for tp in revoked:
                    self._positions.pop(tp, None)
                    self._paused.discard(tp)
                    self.broker.owners.pop((self.group_id, tp), None)
                self._assigned -= revoked
        with self.broker._lock:
            owners = self.broker.owners
            added = {tp for tp in target - self._assigned if owners.get((self.group_id, tp)) in (None, self)}
            for tp in added:
                self.broker.owners[(self.group_id, tp)] = self
                committed = self.broker.committed[self.group_id].get(tp)
                self._positions[tp] = committed if committed is not None else (
                    0 if self.auto_offset_reset == "earliest" else self.broker.end_offset(tp))
            self._assigned |= added
            if self._assigned == target and self._target is target:
                self._target = None
        if added:
            self._call_listener("on_partitions_assigned", added)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[FakeRecord]]:
        self._owner_check()
        if self.closed:
            raise RuntimeError("consumer closed")
        if self.hang_polls:
            self.hanging.set()
            self._interrupted.wait()
            raise RuntimeError("the fake consumer's poll was interrupted")
        self.polls += 1
        self._apply_rebalance()
        limit = max_records or self.max_poll_records
        deadline = time.monotonic() + timeout_ms / 1000
        with self.broker._lock:
            while True:
                out: dict[TopicPartition, list[FakeRecord]] = {}
                budget = limit
                for tp in sorted(self._assigned - self._paused):
                    log = self.broker.topics[tp.topic][tp.partition]
                    pos = self._positions[tp]
                    take = log[pos:pos + budget]
                    if take:
                        out[tp] = list(take)
                        self._positions[tp] = pos + len(take)
                        budget -= len(take)
                    if budget <= 0:
                        break
                remaining = deadline - time.monotonic()
                if out or remaining <= 0:
                    return out
                self.broker._arrived.wait(remaining)

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def pause(self, *tps: TopicPartition) -> None:
        self._owner_check()
        self._paused.update(TopicPartition(*tp) for tp in tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._owner_check()
        self._paused.difference_update(TopicPartition(*tp) for tp in tps)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._owner_check()
        tp = TopicPartition(*tp)
        if tp not in self._assigned:
            raise ValueError(f"{tp} is not assigned")
        self._positions[tp] = offset

    def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.seek(tp, 0)

    def position(self, tp: TopicPartition, timeout_ms: int | None = None) -> int:
        return self._positions[TopicPartition(*tp)]

    def beginning_offsets(self, tps: Iterable[TopicPartition], timeout_ms: int | None = None
                          ) -> dict[TopicPartition, int]:
        return {TopicPartition(*tp): 0 for tp in tps}

    def end_offsets(self, tps: Iterable[TopicPartition], timeout_ms: int | None = None) -> dict[TopicPartition, int]:
        return {TopicPartition(*tp): self.broker.end_offset(TopicPartition(*tp)) for tp in tps}

    def committed(self, tp: TopicPartition) -> int | None:
        return self.broker.committed[self.group_id].get(TopicPartition(*tp))

    def _store(self, offsets: dict[Any, Any]) -> dict[TopicPartition, int]:
        if self.fail_commits:
            self.fail_commits -= 1
            raise RuntimeError("injected commit failure")
        plain = {TopicPartition(*tp): getattr(om, "offset", om) for tp, om in offsets.items()}
        with self.broker._lock:
            self.broker.committed[self.group_id].update(plain)
            self.broker.commit_log.append((self.group_id, plain))
        return plain

    def commit(self, offsets: dict[Any, Any] | None = None, timeout_ms: int | None = None) -> None:
        self._owner_check()
        if offsets is None:
            raise ValueError("rxcqrs always commits explicit offsets")
        self._store(offsets)

    def commit_async(self, offsets: dict[Any, Any] | None = None, callback: Any = None) -> FakeFuture:
        future = FakeFuture()
        try:
            future.success(self._store(offsets or {}))
        except Exception as exc:
            future.failure(exc)
        return future

    def close(self, autocommit: bool = False, timeout_ms: int | None = None) -> None:
        if self.closed:
            return
        self._call_listener("on_partitions_revoked", set(self._assigned))
        with self.broker._lock:
            for tp in self._assigned:
                if self.broker.owners.get((self.group_id, tp)) is self:
                    del self.broker.owners[(self.group_id, tp)]
            self._assigned = set()
        self.closed = True
        self.broker.leave(self)


class FakeProducer:
    """``send()`` queues; one sender thread appends in order and completes the futures, like the real one."""

    def __init__(self, broker: FakeBroker, **_ignored: Any) -> None:
        self.broker = broker
        self.failures: list[BaseException] = []  # raised (as delivery errors) by the next sends, in order
        self.sent = 0
        self._queue: "queue.Queue[tuple[FakeFuture, tuple[Any, ...]] | None]" = queue.Queue()
        self._sender = threading.Thread(target=self._run, name="fake-producer-sender", daemon=True)
        self._sender.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            future, (topic, value, key, partition, headers, timestamp_ms, error) = item
            if error is not None:
                future.failure(error)
            else:
                try:
                    record = self.broker.append(topic, value, key, partition, headers, timestamp_ms)
                except UnknownTopicError as exc:
                    future.failure(exc)
                else:
                    self.sent += 1
                    future.success(record)
            self._queue.task_done()

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
             headers: Iterable[tuple[str, bytes]] | None = None, partition: int | None = None,
             timestamp_ms: int | None = None) -> FakeFuture:
        future = FakeFuture()
        error = self.failures.pop(0) if self.failures else None
        self._queue.put((future, (topic, value, key, partition, list(headers or ()), timestamp_ms, error)))
        return future

    def partitions_for(self, topic: str) -> set[int]:
        with self.broker._lock:
            return set(range(len(self.broker.topics.get(topic, []))))

    def flush(self, timeout: float | None = None) -> None:
        self._queue.join()

    def close(self, timeout: float | None = None) -> None:
        self.flush(timeout)
        self._queue.put(None)
