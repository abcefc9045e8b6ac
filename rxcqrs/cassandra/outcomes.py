"""What happened to a Cassandra request: applied, not applied, unknown, permanent, or transient.

Every remote call has one of these outcomes, and each asks for a different reaction:

* **applied** - the statement took effect (for a lightweight transaction: ``[applied]`` is true);
* **not applied** - a lightweight transaction's condition was false (an optimistic-lock conflict): run the
  command function again on fresh state;
* **transient** - nothing was written (unavailable, overloaded, bootstrapping, no host could be tried, a read
  timed out): retrying is always safe;
* **unknown** - the request may or may not have been applied (a write timed out, the connection broke after
  the request was sent, a client-side timeout): only an idempotent statement may simply be retried; a
  read-modify-write command must first find out (see :mod:`rxcqrs.cassandra.executor`);
* **permanent** - retrying cannot help (invalid request, missing keyspace or table, syntax, unauthorized,
  configuration, a bug in the user's function): the flow stops with a clear error.

``connect()`` installs :class:`OutcomeRetryPolicy` so that the driver itself never re-sends a non-idempotent
request whose outcome is unknown (its default policy retries connection errors on the next host).
"""

from __future__ import annotations

import enum
from typing import Any

from cassandra import (
    AuthenticationFailed,
    CoordinationFailure,
    FunctionFailure,
    OperationTimedOut,
    ReadFailure,
    ReadTimeout,
    RequestValidationException,
    Unavailable,
    WriteFailure,
    WriteTimeout,
)
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionException
from cassandra.policies import RetryPolicy
from cassandra.pool import NoConnectionsAvailable
from cassandra.protocol import IsBootstrappingErrorMessage, OverloadedErrorMessage, ServerError, TruncateError
from cassandra.protocol import RequestValidationException as ValidationMessage

__all__ = ["Outcome", "classify", "OutcomeRetryPolicy"]


class Outcome(str, enum.Enum):
    APPLIED = "applied"
    NOT_APPLIED = "not_applied"
    TRANSIENT = "transient"
    UNKNOWN = "unknown"
    PERMANENT = "permanent"


def classify(error: BaseException, *, sent: bool = True) -> Outcome:
    """The outcome of a request that failed with ``error``.

    ``sent=False`` says the error came before anything could be written (the command function's own read,
    for instance): then timeouts and broken connections are merely transient.
    """
    if isinstance(error, (RequestValidationException, ValidationMessage, AuthenticationFailed, FunctionFailure)):
        return Outcome.PERMANENT  # invalid request, unknown keyspace/table, syntax, unauthorized, configuration
    if isinstance(error, (Unavailable, NoHostAvailable, NoConnectionsAvailable, OverloadedErrorMessage,
                          IsBootstrappingErrorMessage, TruncateError, ReadTimeout, ReadFailure)):
        return Outcome.TRANSIENT  # the coordinator applied nothing, no host was even tried, or it was a read
    if isinstance(error, (WriteTimeout, WriteFailure, CoordinationFailure, OperationTimedOut, ConnectionException,
                          ServerError, OSError, TimeoutError)):
        return Outcome.UNKNOWN if sent else Outcome.TRANSIENT
    return Outcome.PERMANENT  # anything else is a bug or a bad value: retrying would fail the same way


class OutcomeRetryPolicy(RetryPolicy):
    """The driver's default policy, except: a request error (a broken connection, a server error) is retried
    on the next host only for idempotent statements or when the coordinator certainly applied nothing
    (overloaded, bootstrapping); and write timeouts are always handed to rxcqrs, which knows whether the
    statement may be sent again."""

    def on_request_error(self, query: Any, consistency: Any, error: Any, retry_num: int) -> Any:
        if isinstance(error, (OverloadedErrorMessage, IsBootstrappingErrorMessage)):
            return self.RETRY_NEXT_HOST, None
        if query is not None and getattr(query, "is_idempotent", False):
            return self.RETRY_NEXT_HOST, None
        return self.RETHROW, None

    def on_write_timeout(self, query: Any, consistency: Any, write_type: Any, required_responses: int,
                         received_responses: int, retry_num: int) -> Any:
        return self.RETHROW, None
