"""`Services`: what the engine lends every segment it runs (one instance per engine)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from kflow._clock import Clock
from kflow._env import EnvProvider
from kflow._http import CircuitBreakers
from kflow._models import StepState
from kflow._store import Database, Store
from kflow._workflow import Registry

if TYPE_CHECKING:  # httpx costs ~70 ms to import: only code that makes requests pays
    import httpx

__all__ = ["Closures", "Listener", "Services"]

Closures = dict[uuid.UUID, dict[str, Callable[[], Any]]]
"""In-process closure compensations: run id -> step key -> zero-argument callable."""

Listener = Callable[[uuid.UUID, StepState], None]
"""Told ``(run_id, record)`` after each record a segment stores."""


@dataclass
class Services:
    store: Store
    registry: Registry
    clock: Clock
    env: EnvProvider
    breakers: CircuitBreakers
    given_http_client: httpx.AsyncClient | None = None
    closures: Closures = field(default_factory=dict)
    app_db: Database | None = None
    persist_step_start: bool = False
    record_running_after: timedelta | None = None
    """Record a step as running once it has run this long (live status for slow steps,
    no extra write for fast ones); `persist_step_start` records every start up front."""
    max_inline_backoff: timedelta = timedelta(seconds=30)
    listeners: list[Listener] = field(default_factory=list)
    """Told of every record a segment writes (the operator mirrors them into status)."""
    _own_http: httpx.AsyncClient | None = None

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The given client, else one made at first use (most workflows never need one,
        and a runner Pod should not pay for it)."""
        if self.given_http_client is not None:
            return self.given_http_client
        if self._own_http is None:
            import httpx

            self._own_http = httpx.AsyncClient()
        return self._own_http

    async def close(self) -> None:
        if self._own_http is not None:
            await self._own_http.aclose()
            self._own_http = None
