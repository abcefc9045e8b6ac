"""Keep secrets out of ``repr`` and logs: any setting whose name looks like a credential is shown as ``'***'``."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

__all__ = ["is_secret", "redact", "redacted_repr"]

_SECRET = re.compile(r"pass(word)?|secret|token|credential|(^|_)key(_|$)|keystore|truststore|sasl_oauth|jaas",
                     re.IGNORECASE)
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
