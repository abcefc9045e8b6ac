"""rxcqrs: CQRS, Event Sourcing and Event Logging streams from Kafka to Cassandra with ReactiveX.

The common case in a few lines: :func:`publish`, :class:`Table`, :func:`cqrs` (see :mod:`rxcqrs.quick`), your
own aggregate as a :class:`Decider` (decide and evolve) with :func:`cqrs` and :func:`store`, its read models
with :func:`project`. Or
compose a :class:`~rxcqrs.kafka.KafkaSource` (pull-based, commits gated by acks), envelope-aware
operators (:mod:`rxcqrs.operators`), a broadcast into a command sink and an event-log sink, and
:func:`run` it to get a :class:`Flow` handle.
"""

from rxcqrs.acks import Ticket
from rxcqrs.backoff import Backoff
from rxcqrs.commit import CommitGate
from rxcqrs.decider import Decider, Reject
from rxcqrs.exceptions import RxCqrsError
from rxcqrs.flow import Flow, run
from rxcqrs.messages import Batch, Envelope, OutgoingRecord, RecordMetadata, TopicPartition
from rxcqrs.metrics import Metrics
from rxcqrs.quick import Table, cqrs, project, publish, store

#: the rest of the public API, importable from here too (``from rxcqrs import KafkaSource, connect``);
#: loaded on first use, so ``import rxcqrs`` does not import the Kafka and Cassandra clients
_LAZY = {
    "rxcqrs.kafka": ("KafkaSource", "KafkaSink", "ConsumerSettings", "ProducerSettings", "SourceSettings",
                     "create_topics", "delete_topics", "committed_offsets", "end_offsets"),
    "rxcqrs.cassandra": ("Aggregate", "AggregateSink", "CassandraQuery", "CassandraRetrySink", "CassandraSettings",
                         "CassandraSink", "Compensator", "EventLog", "Rebuilder", "cassandra_conditional", "connect",
                         "create_keyspace", "create_table", "prepare", "EntityView", "TotalsView", "Projection"),
    "rxcqrs.operators": ("AckAll", "DeadLetters", "branch", "broadcast", "collect_right", "decode", "filter_value",
                         "flatten", "map_async", "map_envelope", "map_value", "route_either", "spy", "tap",
                         "unbatch"),
    "rxcqrs.avro": ("AvroCodec",),
    "rxcqrs.config": ("load_config",),
    "rxcqrs.supervisor": ("supervise",),
}
_HOME = {name: module for module, names in _LAZY.items() for name in names}
#: old names that still work for one release, with a DeprecationWarning saying what to use
_DEPRECATED = {"Committer": ("rxcqrs.kafka.committer", "Committer", "rxcqrs.Committer is internal to KafkaSource "
                             "(its commits); it leaves the top level in the next release: read commit progress "
                             "with KafkaSource.records_committed() or Flow.committed()")}

__all__ = ["Backoff", "Batch", "CommitGate", "Decider", "Envelope", "Flow", "Metrics", "OutgoingRecord",
           "RecordMetadata", "Reject", "RxCqrsError", "Table", "Ticket", "TopicPartition", "cqrs", "project", "publish",
           "run", "store", *_HOME]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    import importlib

    if name in _DEPRECATED:
        import warnings

        home, attribute, message = _DEPRECATED[name]
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(home), attribute)
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'rxcqrs' has no attribute {name!r}")

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
