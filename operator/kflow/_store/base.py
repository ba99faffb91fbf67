"""What the store's parts share: the pool they use, and how failures surface.

Every method that talks to PostgreSQL is wrapped by `guarded`: driver and network
failures become `PersistenceError` (kflow's own errors pass through), so no caller ever
mistakes a failed write for a done one.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Concatenate, ParamSpec, TypeVar

import asyncpg

from kflow._errors import KflowError, PersistenceError

__all__ = ["StoreBase", "guarded"]

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound="StoreBase")


class StoreBase:
    """A pool on one schema (the search path of every connection)."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self.pool = pool
        self.schema = schema


def guarded(
    fn: Callable[Concatenate[S, P], Awaitable[R]],
) -> Callable[Concatenate[S, P], Awaitable[R]]:
    """Turn driver and network failures into `PersistenceError`, keeping kflow's own."""

    @functools.wraps(fn)
    async def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(self, *args, **kwargs)
        except KflowError:
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise PersistenceError(f"store.{fn.__name__} failed: {exc}") from exc

    return wrapper
