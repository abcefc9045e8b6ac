"""A typed HTTP GET: a dataclass becomes a query, the response becomes ``Right(value)`` or ``Left(reason)``.

* 200 with a JSON body -> ``Right(map_right(parsed))``; 200 with ``text/plain`` -> ``Left(map_left(text))``;
  200 with another content type -> ``Left("FAIL unsupported content type ...")``;
* 400 -> ``Left("FAIL bad request: <body>")``; any other status -> ``Left("FAIL <status> <body>")``;
* a transport failure (refused, timeout) -> ``Left("FAIL <error>")``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable

from rxcqrs.either import Either, Left, Right
from rxcqrs.http.urls import to_query

__all__ = ["HttpResponse", "get", "typed_response", "typed_query"]


@dataclass(frozen=True)
class HttpResponse:
    status: int
    content_type: str
    body: str


def get(url: str, timeout: float = 10.0) -> HttpResponse:
    """A blocking GET; HTTP error statuses are responses too, not exceptions."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return HttpResponse(reply.status, reply.headers.get_content_type(),
                                reply.read().decode(reply.headers.get_content_charset() or "utf-8"))
    except urllib.error.HTTPError as error:
        return HttpResponse(error.code, error.headers.get_content_type() if error.headers else "",
                            error.read().decode("utf-8", "replace"))


def typed_response(response: HttpResponse, map_right: Callable[[Any], Any] = lambda v: v,
                   map_left: Callable[[str], Any] = lambda t: t) -> Either[Any, Any]:
    if response.status == 200:
        if response.content_type == "application/json" or response.content_type.endswith("+json"):
            return Right(map_right(json.loads(response.body)))
        if response.content_type == "text/plain":
            return Left(map_left(response.body))
        return Left(f"FAIL unsupported content type {response.content_type!r}")
    if response.status == 400:
        return Left(f"FAIL bad request: {response.body}")
    return Left(f"FAIL {response.status} {response.body}")


def typed_query(base_url: str, path: str, request: Any, *, map_right: Callable[[Any], Any] = lambda v: v,
                map_left: Callable[[str], Any] = lambda t: t, timeout: float = 10.0) -> Either[Any, Any]:
    """GET ``base_url + path?fields`` and type the answer (never raises for HTTP or transport failures)."""
    try:
        response = get(base_url + to_query(path, request), timeout)
    except (OSError, urllib.error.URLError) as error:
        return Left(f"FAIL {error!r}")
    return typed_response(response, map_right, map_left)
