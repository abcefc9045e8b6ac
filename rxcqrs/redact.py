"""Keep secrets out of ``repr`` and logs: any setting whose name looks like a credential is shown as ``'***'``."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

__all__ = ["is_secret", "redact", "redacted_repr", "redact_text", "redact_error"]

_SECRET = re.compile(r"pass(word|wd)?|pwd|(^|[_.])pw($|[_.])|secret|token|credential|(^|[_.])key([_.]|$)|keystore|"
                     r"truststore|sasl_oauth|oauthbearer|jaas", re.IGNORECASE)
MASK = "***"


def is_secret(name: str) -> bool:
    return bool(_SECRET.search(name))


def redact(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with secret-looking values masked (recursing into nested mappings)."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if is_secret(name) and value is not None:
            out[name] = MASK
        elif isinstance(value, Mapping):
            out[name] = redact(value)
        else:
            out[name] = value
    return out


def redacted_repr(obj: Any) -> str:
    """``repr`` of a dataclass with its secret fields masked."""
    fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.repr}
    shown = ", ".join(f"{k}={v!r}" for k, v in redact(fields).items())
    return f"{type(obj).__name__}({shown})"


def _secret_values(config: Mapping[str, Any]) -> list[str]:
    values = []
    for name, value in config.items():
        if isinstance(value, Mapping):
            values += _secret_values(value)
        elif is_secret(str(name)) and value not in (None, ""):
            values.append(str(value))
    return values


def redact_text(text: str, config: Mapping[str, Any]) -> str:
    """``text`` with every secret value of ``config`` (and its ``repr``) masked: client errors such as
    kafka-python's "Unrecognized configs: {...}" echo the configuration they were given."""
    for value in sorted(_secret_values(config), key=len, reverse=True):
        text = text.replace(repr(value), repr(MASK)).replace(value, MASK)
    return text


def redact_error(error: BaseException, config: Mapping[str, Any]) -> str:
    """``repr(error)`` with the secrets of ``config`` masked (for messages that wrap client errors)."""
    return redact_text(repr(error), config)
