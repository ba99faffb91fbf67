"""Environment access for handlers over a pluggable `EnvProvider`.

Handlers read configuration through ``ctx.env*`` rather than ``os.environ`` so that tests
(and the operator, which may inject a WorkflowDefinition's env) can supply their own values.
Environment values are configuration, not data: they are not recorded, so a replay sees
the environment of the process doing the replay.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar, overload

from pydantic import TypeAdapter, ValidationError

from kflow._errors import EnvError

__all__ = ["EnvAccess", "EnvProvider", "MappingEnv", "OsEnv"]

T = TypeVar("T")


class EnvProvider(Protocol):
    def get(self, key: str) -> str | None: ...


class OsEnv:
    """The process environment."""

    def get(self, key: str) -> str | None:
        return os.environ.get(key)


class MappingEnv:
    """A fixed mapping: for tests, or an operator-supplied environment."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    def get(self, key: str) -> str | None:
        return self._values.get(key)


def _parse(key: str, raw: str, parse: type[T] | Callable[[str], T]) -> T:
    try:
        value: T = (
            TypeAdapter(parse).validate_strings(raw) if isinstance(parse, type) else parse(raw)
        )
    except (ValidationError, ValueError, TypeError) as exc:
        name = getattr(parse, "__name__", repr(parse))
        raise EnvError(f"environment variable {key} is not a valid {name}: {exc}") from exc
    return value


class EnvAccess:
    """The ``env*`` methods of `WorkflowContext`, over an `EnvProvider`."""

    def __init__(self, provider: EnvProvider) -> None:
        self.env_provider = provider

    def env(self, key: str) -> str | None:
        return self.env_provider.get(key)

    def env_or(self, key: str, default: str) -> str:
        value = self.env_provider.get(key)
        return default if value is None else value

    def env_require(self, key: str) -> str:
        value = self.env_provider.get(key)
        if value is None:
            raise EnvError(f"environment variable {key} is required but not set")
        return value

    def env_contains(self, key: str) -> bool:
        return self.env_provider.get(key) is not None

    def env_parse(self, key: str, parse: type[T] | Callable[[str], T]) -> T:
        """Parse a required variable; ``parse`` is a type (``int``, ``timedelta``, ...)
        validated the way pydantic reads strings, or any ``str -> T`` callable."""
        return _parse(key, self.env_require(key), parse)

    @overload
    def env_parse_or(self, key: str, default: T) -> T: ...
    @overload
    def env_parse_or(self, key: str, default: T, parse: Callable[[str], T]) -> T: ...

    def env_parse_or(self, key: str, default: T, parse: Any = None) -> T:
        """The parsed value, or ``default`` when unset. Set but unparseable is an error."""
        raw = self.env_provider.get(key)
        if raw is None:
            return default
        parsed: T = _parse(key, raw, parse or type(default))
        return parsed
