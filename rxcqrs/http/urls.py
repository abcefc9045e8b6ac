"""URLs (ports 0..65535) and GET queries, validated."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Any
from urllib.parse import urlencode

from rxcqrs.exceptions import ConfigError

__all__ = ["create_url", "to_query"]

_HOST = re.compile(r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                   r"[A-Za-z0-9])?)*\Z")
_PATH = re.compile(r"/[/.a-zA-Z0-9-]*\Z")


def create_url(scheme: str, host: str, port: int, path: str = "/") -> str:
    """``scheme://host:port/path`` after checking each part: http or https, a host name or IPv4 address, a port
    in 0..65535 and a path of ``/[/.a-zA-Z0-9-]*``."""
    if scheme not in ("http", "https"):
        raise ConfigError(f"scheme must be http or https, got {scheme!r}")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if not _HOST.match(host or ""):
            raise ConfigError(f"{host!r} is neither a host name nor an IPv4 address") from None
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port must be in 0..65535, got {port!r}")
    if not _PATH.match(path):
        raise ConfigError(f"path must match /[/.a-zA-Z0-9-]*, got {path!r}")
    return f"{scheme}://{host}:{port}{path}"


def to_query(path: str, request: Any) -> str:
    """``path?field=value&...`` from a dataclass's fields, URL-encoded."""
    if not dataclasses.is_dataclass(request) or isinstance(request, type):
        raise ConfigError(f"a GET query is built from a dataclass instance, got {request!r}")
    fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
    return f"{path}?{urlencode(fields)}" if fields else path
