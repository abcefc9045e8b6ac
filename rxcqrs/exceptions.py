"""The one exception tree of rxcqrs: everything it raises on purpose is an ``RxCqrsError``.

Driver errors (kafka-python, cassandra-driver, fastavro) are wrapped with ``raise ... from exc`` so the
original stays reachable as ``__cause__``. An error with ``permanent = True`` cannot be cured by retrying:
a source stops on it at once (no rewind, no backoff), whatever its failure policy.
"""

from __future__ import annotations

__all__ = [
    "RxCqrsError",
    "ConfigError",
    "ServiceError",
    "JavaNotFoundError",
    "MavenError",
    "PortInUseError",
    "ServiceStartError",
    "SerializationError",
    "PoisonRecordError",
    "FramingError",
    "UnknownSchemaError",
    "SchemaResolutionError",
    "SchemaRegistryError",
    "CommitError",
    "GroupMovedOnError",
    "OffsetOrderError",
    "StageError",
    "RetriesExhaustedError",
    "PermanentStageError",
    "UnknownOutcomeError",
    "TopicNotFoundError",
    "SchemaError",
    "is_permanent",
    "NotAppliedError",
    "DeliveryError",
    "FlowError",
    "DrainTimeoutError",
    "IdentifierError",
]


class RxCqrsError(Exception):
    """Root of every error rxcqrs raises on purpose."""

    #: True when retrying cannot help (see the module docstring)
    permanent: bool = False


def is_permanent(error: BaseException | None) -> bool:
    """Whether ``error`` (or the error it wraps) says that retrying cannot help."""
    seen = 0
    while error is not None and seen < 8:
        if getattr(error, "permanent", False):
            return True
        error, seen = error.__cause__, seen + 1
    return False


class ConfigError(RxCqrsError, ValueError):
    """A setting is missing, malformed or inconsistent."""

    permanent = True


class IdentifierError(ConfigError):
    """A keyspace, table or column name is not a safe CQL identifier."""


class ServiceError(RxCqrsError):
    """The local Kafka/Cassandra servers could not be fetched, started, probed or stopped."""


class JavaNotFoundError(ServiceError):
    """No JDK 17 was found (both servers need it; Cassandra 5.0 cannot run on 21+)."""


class MavenError(ServiceError):
    """Maven is missing or could not resolve an artifact."""


class PortInUseError(ServiceError):
    """A port a server needs is already bound by a process rxcqrs did not start."""


class ServiceStartError(ServiceError):
    """A server process exited during start-up or was not ready in time (message holds the log tail)."""


class SerializationError(RxCqrsError):
    """Bytes could not be decoded, or an object could not be encoded."""


class PoisonRecordError(SerializationError):
    """A consumed record cannot be turned into a command: bad Avro, bad key, unknown action."""

    permanent = True


class FramingError(SerializationError):
    """A value is not in the Confluent wire format (magic byte 0, a 4-byte schema id, the Avro body)."""


class UnknownSchemaError(SerializationError):
    """A value's schema id is not in the schema registry."""


class SchemaResolutionError(SerializationError):
    """A value's writer schema cannot be resolved to the reader schema (an evolution Avro does not allow)."""


class SchemaRegistryError(RxCqrsError):
    """The schema registry refused a request (``status`` 4xx: permanent) or did not answer in time."""

    def __init__(self, message: str, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.permanent = status is not None and 400 <= status < 500


class CommitError(RxCqrsError):
    """An offset commit failed."""


class GroupMovedOnError(CommitError):
    """The group refused a commit because it is rebalancing or this member was replaced (a new generation):
    the partitions belong to the next assignment now, which starts from the last accepted commit. Not an error
    of the flow: what was not committed is delivered again."""


class OffsetOrderError(CommitError):
    """An offset was acknowledged that was never emitted, or a commit would go backwards."""


class StageError(RxCqrsError):
    """A stage could not process an element."""


class RetriesExhaustedError(StageError):
    """A retriable failure kept happening until the backoff reached its maximum delay."""


class PermanentStageError(StageError):
    """A stage failed in a way no retry can cure (an invalid request, a missing table, a bug)."""

    permanent = True


class UnknownOutcomeError(StageError):
    """A write whose outcome is unknown (timed out after it was sent) could not be resolved: re-running it
    blindly could apply it twice, so the flow stops and the record is redelivered after a restart."""

    permanent = True


class NotAppliedError(StageError):
    """A lightweight transaction was not applied (an optimistic-lock conflict)."""


class DeliveryError(StageError):
    """A record could not be delivered to Kafka."""


class FlowError(RxCqrsError):
    """A running flow failed (the cause is attached)."""


class DrainTimeoutError(FlowError):
    """A stopping flow's drain ran out of time: what is still in flight is abandoned at once (not acked, so
    delivered again after a restart)."""


class TopicNotFoundError(FlowError):
    """A Kafka topic a source or sink needs does not exist (rxcqrs never creates topics implicitly)."""

    permanent = True


class SchemaError(FlowError):
    """A keyspace or table a flow needs is missing, or must not be created now."""

    permanent = True
