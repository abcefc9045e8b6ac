"""A client of a Confluent-compatible schema registry (Confluent Schema Registry, or Apicurio Registry's
``/apis/ccompat/v7``): writer schemas registered under a subject, looked up by id and cached.

Every request has a deadline (``timeout``): a transient failure (no connection, a 5xx, a timeout) is tried
again until it; a refusal (4xx) is final and named in one line. Ids never change meaning, so a schema fetched
once is cached for good. Thread-safe.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping

from rxcqrs.backoff import Backoff, retry_until
from rxcqrs.clock import SYSTEM, Clock
from rxcqrs.exceptions import ConfigError, SchemaRegistryError, UnknownSchemaError

__all__ = ["SchemaRegistry", "subject_of"]

_CONTENT = "application/vnd.schemaregistry.v1+json"
_BACKOFF = Backoff(min_delay=0.05, max_delay=1.0, random_factor=0.0)


def subject_of(topic: str) -> str:
    """The subject of a topic's values (Confluent's ``TopicNameStrategy``)."""
    return f"{topic}-value"


class SchemaRegistry:
    """``url``: the registry's Confluent-compatible API, e.g. ``http://127.0.0.1:8081/apis/ccompat/v7``."""

    def __init__(self, url: str, timeout: float = 10.0, clock: Clock = SYSTEM) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"schema registry URL {url!r} is not an http(s) URL (e.g. "
                              "http://127.0.0.1:8081/apis/ccompat/v7)")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._schemas: dict[int, dict[str, Any]] = {}

    def register(self, subject: str, schema: Mapping[str, Any]) -> int:
        """The id of ``schema`` under ``subject``, registering it as a new version if needed; a schema that
        breaks the subject's compatibility level raises :class:`SchemaRegistryError` in one line."""
        body = {"schema": json.dumps(schema, separators=(",", ":")), "schemaType": "AVRO"}
        try:
            answer = self._request("POST", f"/subjects/{_quote(subject)}/versions", body)
        except SchemaRegistryError as exc:
            if exc.status == 409:
                raise SchemaRegistryError(
                    f"schema {schema.get('name')} is incompatible with subject {subject!r} at its compatibility "
                    f"level ({exc.reason}): change the schema compatibly (add fields with defaults) or the subject's "
                    "level", exc.status) from None
            raise
        schema_id = int(answer["id"])
        with self._lock:
            self._schemas.setdefault(schema_id, dict(schema))
        return schema_id

    def schema(self, schema_id: int) -> dict[str, Any]:
        """The writer schema of ``schema_id`` (cached); :class:`UnknownSchemaError` if the registry has none."""
        with self._lock:
            found = self._schemas.get(schema_id)
        if found is not None:
            return found
        try:
            answer = self._request("GET", f"/schemas/ids/{int(schema_id)}")
        except SchemaRegistryError as exc:
            if exc.status == 404:
                raise UnknownSchemaError(f"schema id {schema_id} is not in the registry at {self.url}") from None
            raise
        schema = json.loads(answer["schema"])
        with self._lock:
            self._schemas[schema_id] = schema
        return dict(schema)

    def set_compatibility(self, subject: str, level: str) -> None:
        """Set ``subject``'s compatibility level (``BACKWARD``, ``FORWARD``, ``FULL``, ``NONE``, ...)."""
        self._request("PUT", f"/config/{_quote(subject)}", {"compatibility": level})

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()

        def attempt(left: float) -> Any:
            request = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                             headers={"Content-Type": _CONTENT, "Accept": _CONTENT})
            try:
                with urllib.request.urlopen(request, timeout=max(0.1, left)) as answer:
                    return json.load(answer)
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    reason = _reason(exc)
                    raise SchemaRegistryError(f"the schema registry refused {method} {path}: {exc.code} {reason}",
                                              exc.code, reason) from None
                raise

        try:
            return retry_until(attempt, self._clock.now() + self.timeout, _transient, _BACKOFF, self._clock)
        except SchemaRegistryError:
            raise
        except Exception as exc:
            raise SchemaRegistryError(f"the schema registry at {self.url} did not answer {method} {path} within "
                                      f"{self.timeout:g}s: {exc}") from None


def _transient(error: Exception) -> bool:
    """A 5xx answer, a refused or broken connection, a timeout (each an ``OSError``): another try may succeed."""
    return isinstance(error, OSError)


def _quote(subject: str) -> str:
    return urllib.parse.quote(subject, safe="")


def _reason(error: urllib.error.HTTPError) -> str:
    try:
        payload = json.loads(error.read() or b"{}")
    except ValueError:
        return str(error.reason)
    return str(payload.get("message") or error.reason) if isinstance(payload, dict) else str(error.reason)
