"""Kafka stages: :class:`KafkaSource` (pull-based, gated commits) and :class:`KafkaSink` (async, retrying).

The threading model
-------------------
This is the one place it is written down; every other docstring refers here.

* **The poll thread** (one per :class:`KafkaSource`, named ``rxcqrs-poll-<name>``) owns the consumer client.
  Only it calls ``poll``, ``pause``/``resume``, ``seek``, ``commit``, ``end_offsets``, ``committed``,
  ``position`` and ``close``. It is also the only thread that calls ``on_next`` downstream, so operators
  up to the first asynchronous stage run on it, one record (or, with ``SourceSettings(batches=True)``, one
  batch of a partition's records) at a time. It asks the
  :class:`~rxcqrs.kafka.committer.Committer` what to commit (``maybe_commit``), how to react to failures
  (``check_failures``, ``finish_rewinds``) and which partitions to hold back (``held``), and it answers
  ownership checks (:mod:`rxcqrs.kafka.ownership`: a re-commit that a fenced-out member cannot make).
* **Ack threads**: a record's ticket is settled (ack or nack) from whatever thread finished it: the
  Cassandra driver's event loop, a Kafka producer's delivery thread, a worker pool, or the poll thread
  itself. Settling touches only the thread-safe :class:`~rxcqrs.commit.CommitGate`, which wakes the poll
  thread; commits still happen on the poll thread, and never past a record that is not done.
* **Rebalance callbacks** come from the client: kafka-python runs them on its IO thread (where blocking
  consumer calls raise, so the listener is async and awaits ``commit_async``), confluent-kafka on the poll
  thread inside ``poll``. They call only the Committer's ``revoked``/``assigned``/``lost``, which touch
  only the gate and the Committer's lock-protected commit record, never the poll thread's buffers: records
  of a revoked partition that are still buffered carry an old epoch and are dropped when their turn comes.
  Stages that watch partitions (:mod:`rxcqrs.partitions`) are told from the same callbacks and only queue
  work for their own threads; a stage that keeps its offsets outside Kafka answers, from the same callback
  and within a bounded read, where the new partitions start (``start_at``), which the client applies in that
  callback, before their first fetch.
* **The command engine** (:class:`~rxcqrs.cassandra.AggregateSink`) has a worker thread that starts batches
  and runs every step the driver's callbacks hand it (the driver's event loop only reads and writes the
  wire), and a fencer thread that takes epochs with blocking round trips; neither touches the consumer.
* **The liveness watchdog** (one thread per source) only watches the clock of the poll thread's current
  client call. When a call hangs it calls the client's ``interrupt()``, the single exception to "only the
  poll thread touches the client": it breaks the call (kafka-python: stops its network loop) so that the
  poll thread, which then closes and replaces the client, can continue.
* **Producers** (:class:`KafkaSink`) may be called from any thread; delivery reports arrive on the
  client's own thread (kafka-python's sender, or the delivery poller of the confluent backend).
"""

from rxcqrs.kafka.admin import committed_offsets, create_topics, delete_topics, end_offsets
from rxcqrs.kafka.committer import Committer
from rxcqrs.kafka.settings import ConsumerSettings, ProducerSettings, SourceSettings
from rxcqrs.kafka.sink import KafkaSink, producer_client
from rxcqrs.kafka.source import KafkaSource, consumer_client

__all__ = ["KafkaSource", "KafkaSink", "Committer", "ConsumerSettings", "ProducerSettings", "SourceSettings",
           "committed_offsets", "consumer_client", "create_topics", "delete_topics", "end_offsets",
           "producer_client"]
