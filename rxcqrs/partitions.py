"""Stages that keep state per partition assignment, and what a source tells them.

A command stage caches entities and fences its writes with an epoch per assignment: it must hear of every
assignment and revoke of the source's partitions. Such a stage says so with a ``watch_partitions`` method
(the way stages say they take batches); :func:`~rxcqrs.run` finds it (in broadcast branches too) and calls
``stage.watch_partitions(source)`` before the source is subscribed, when the source tells assignments
(:class:`Assignments`, which :class:`~rxcqrs.kafka.KafkaSource` implements).

Listeners run on the client's rebalance thread (see :mod:`rxcqrs.kafka`): they must be quick and
thread-safe, and never call the consumer. A stage that keeps its input offsets outside Kafka (a projection
whose offsets live with its read model) gives the source :data:`StartPositions` too: the source starts each
newly assigned partition there, the way a Kafka consumer seeks in ``onPartitionsAssigned``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

from rxcqrs.messages import TopicPartition

__all__ = ["Assignments", "PartitionListener", "StartPositions", "Confirmed", "watchers", "attach_watchers"]

PartitionListener = Callable[[list[TopicPartition]], None]
#: where assigned partitions start (``{partition: offset}``, an offset <= 0 the beginning; partitions left out
#: start at the group's committed offsets); called on the client's rebalance thread, so it must be bounded
StartPositions = Callable[[list[TopicPartition]], Mapping[TopicPartition, int]]
#: the answer of :meth:`Assignments.confirm_ownership`: True (still a member of the current generation),
#: False (the group moved on: the partitions are being taken away), None (could not tell now: ask again)
Confirmed = Callable[[bool | None], None]


@runtime_checkable
class Assignments(Protocol):
    """What a source tells about the partitions it consumes, as a member of ``group_id``."""

    @property
    def group_id(self) -> str: ...

    def on_assign(self, listener: PartitionListener) -> None:
        """Call ``listener(partitions)`` when partitions are assigned (before any of their records is emitted)."""

    def on_revoke(self, listener: PartitionListener) -> None:
        """Call ``listener(partitions)`` when partitions are revoked or lost."""

    def start_at(self, positions: StartPositions) -> None:
        """Start newly assigned partitions where ``positions(partitions)`` says (offsets kept outside Kafka,
        e.g. with a read model), not at the group's committed offsets."""

    def confirm_ownership(self, tps: Sequence[TopicPartition], then: Confirmed) -> None:
        """Ask the group coordinator, after this call, whether this member still belongs to the group's current
        generation (a commit of the partitions' committed offsets, which a fenced-out member cannot make);
        ``then`` gets the answer on the poll thread."""


def watchers(stages: Sequence[Any]) -> Iterator[Any]:
    """Every stage (operators, sinks, and the stages of broadcast branches) with ``watch_partitions``."""
    for stage in stages:
        if callable(getattr(stage, "watch_partitions", None)):
            yield stage
        inner = getattr(stage, "stages", None)
        if isinstance(inner, (list, tuple)):
            yield from watchers(inner)


def attach_watchers(source: Any, stages: Sequence[Any]) -> None:
    """Tell every watching stage of ``stages`` about ``source``'s assignments (if it tells them)."""
    if not isinstance(source, Assignments):
        return
    for stage in watchers(stages):
        stage.watch_partitions(source)
