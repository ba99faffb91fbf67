"""JSON conversion of step results, inputs, outputs and event payloads.

Everything kflow stores is JSON. A value goes in through pydantic's ``to_jsonable_python``
(models, dataclasses, datetimes and UUIDs included) and comes back through a
``TypeAdapter`` of the type the code asked for, so a replay returns the same type as the
first execution did. Without a type, the JSON form itself is what both return.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

__all__ = ["decode", "describe_validation_error", "encode", "type_name"]

_SCALARS = (str, int, float, bool, type(None))


_NONE = type(None)


def encode(value: Any) -> Any:
    """The JSON-compatible form of ``value``; `TypeError` if it has none."""
    if isinstance(value, _SCALARS):
        return value
    try:
        return to_jsonable_python(value)
    except PydanticSerializationError as exc:
        raise TypeError(f"{type(value).__name__} cannot be stored as JSON: {exc}") from exc


@functools.lru_cache(maxsize=512)
def _adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


def adapter(tp: Any) -> TypeAdapter[Any]:
    try:
        return _adapter(tp)
    except TypeError:  # unhashable type expression: build it each time
        return TypeAdapter(tp)


def decode(value: Any, tp: Any) -> Any:
    """``value`` (JSON) as ``tp``; the JSON itself when ``tp`` is None."""
    if tp is None or tp is Any or (value is None and tp is _NONE):
        return value
    return adapter(tp).validate_python(value)


def type_name(tp: Any) -> str:
    """How an error names a type: ``Item``, ``list[int]``."""
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each offending field: ``amount: Input should be a valid integer``."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        # A validator's ValueError reads "Value error, <its message>": the message alone.
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {message}")
    return "; ".join(parts)
