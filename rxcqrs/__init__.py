"""rxcqrs: CQRS, Event Sourcing and Event Logging streams from Kafka to Cassandra with ReactiveX.

Compose a :class:`~rxcqrs.kafka.KafkaSource` (pull-based, commits gated by acks), envelope-aware
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

__all__ = ["Backoff", "CommitGate", "Envelope", "Flow", "Metrics", "OutgoingRecord", "RecordMetadata",
           "RxCqrsError", "Ticket", "TopicPartition", "run"]
__version__ = "0.1.0"
