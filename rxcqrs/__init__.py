"""rxcqrs: CQRS, Event Sourcing and Event Logging streams from Kafka to Cassandra with ReactiveX.

The common case in a few lines: :func:`publish`, :class:`Table`, :func:`cqrs` (see :mod:`rxcqrs.quick`). Or
compose a :class:`~rxcqrs.kafka.KafkaSource` (pull-based, commits gated by acks), envelope-aware
operators (:mod:`rxcqrs.operators`), a broadcast into a command sink and an event-log sink, and
:func:`run` it to get a :class:`Flow` handle.
"""

from rxcqrs.acks import Ticket
from rxcqrs.backoff import Backoff
from rxcqrs.commit import CommitGate
from rxcqrs.exceptions import RxCqrsError
from rxcqrs.flow import Flow, run
from rxcqrs.messages import Envelope, OutgoingRecord, RecordMetadata, TopicPartition
from rxcqrs.metrics import Metrics
from rxcqrs.quick import Table, cqrs, publish

__all__ = ["Backoff", "CommitGate", "Envelope", "Flow", "Metrics", "OutgoingRecord", "RecordMetadata",
           "RxCqrsError", "Table", "Ticket", "TopicPartition", "cqrs", "publish", "run"]
__version__ = "0.1.0"
