"""Left (a failure, as a value) or Right (a result): what the HTTP stages and parallel calls produce, so one
bad answer is data to route, log or count, not an error that ends the stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar, Union

__all__ = ["Left", "Right", "Either", "is_right"]

L = TypeVar("L")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Left(Generic[L]):
    value: L


@dataclass(frozen=True, slots=True)
class Right(Generic[R]):
    value: R


Either = Union[Left[L], Right[R]]


def is_right(value: Any) -> bool:
    return isinstance(value, Right)
