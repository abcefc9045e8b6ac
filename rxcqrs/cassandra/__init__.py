"""Cassandra stages, the Event Log, the duplicates query, compensation and rebuild.

Stages are reactivex observers/operators: :class:`AggregateSink` (an entity's waiting commands folded and
written with one conditional write), :class:`CassandraRetrySink` (a command function, optimistic locking,
retries), :func:`cassandra_retry_flow` (the same, passing envelopes on: the serial variant),
:func:`cassandra_bind`, :class:`CassandraSink` (statements, bounded concurrency) and :class:`CassandraQuery`
(rows on demand, one page at a time).
"""

from rxcqrs.cassandra.aggregate import Aggregate, AggregateSink, Applied, Rejection, Stored
from rxcqrs.cassandra.bind import cassandra_bind
from rxcqrs.cassandra.compensation import CompensationReport, Compensator, Rebuilder, RebuildReport
from rxcqrs.cassandra.eventlog import Duplicate, EventLog, LoggedEvent
from rxcqrs.cassandra.executor import CassandraExecutor, is_transient, was_applied
from rxcqrs.cassandra.identifiers import cql_type, identifier, qualified
from rxcqrs.cassandra.projection import EntityView, Projection, TotalsView
from rxcqrs.cassandra.query import CassandraQuery
from rxcqrs.cassandra.results import cassandra_bound_query, cassandra_conditional
from rxcqrs.cassandra.retry_sink import CassandraRetrySink, cassandra_retry_flow
from rxcqrs.cassandra.schema import create_keyspace, create_table, drop_keyspace, prepare
from rxcqrs.cassandra.settings import CassandraSettings, connect
from rxcqrs.cassandra.sink import CassandraSink

__all__ = ["Aggregate", "AggregateSink", "Applied", "Rejection", "Stored",
           "CassandraExecutor", "CassandraQuery", "CassandraRetrySink", "CassandraSettings", "CassandraSink",
           "CompensationReport", "Compensator", "Duplicate", "EntityView", "EventLog", "LoggedEvent", "Projection",
           "RebuildReport", "Rebuilder", "TotalsView",
           "cassandra_bind", "cassandra_bound_query", "cassandra_conditional", "cassandra_retry_flow", "connect",
           "cql_type", "create_keyspace", "create_table", "drop_keyspace", "identifier", "is_transient", "prepare",
           "qualified", "was_applied"]
