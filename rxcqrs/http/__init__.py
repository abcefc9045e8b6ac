"""Typed HTTP GET stages: URLs, dataclass queries, Either responses, parallel calls."""

from rxcqrs.http.client import HttpResponse, get, typed_query, typed_response
from rxcqrs.http.stages import parallel_calls, typed_query_flow, zip_either
from rxcqrs.http.urls import create_url, to_query

__all__ = ["HttpResponse", "create_url", "get", "parallel_calls", "to_query", "typed_query", "typed_query_flow",
           "typed_response", "zip_either"]
