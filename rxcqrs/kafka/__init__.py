"""Kafka stages: :class:`KafkaSource` (pull-based, gated commits) and :class:`KafkaSink` (async, retrying)."""

from rxcqrs.kafka.admin import committed_offsets, create_topics, delete_topics
from rxcqrs.kafka.settings import ConsumerSettings, ProducerSettings, SourceSettings
from rxcqrs.kafka.sink import KafkaSink, create_producer
from rxcqrs.kafka.source import KafkaSource

__all__ = ["KafkaSource", "KafkaSink", "ConsumerSettings", "ProducerSettings", "SourceSettings",
           "committed_offsets", "create_producer", "create_topics", "delete_topics"]
