"""`ctx.http`: an httpx client guarded by a per-host circuit breaker.

A breaker opens after ``failure_threshold`` consecutive failures (transport errors or 5xx
responses) to one host, refuses calls with `CircuitOpenError` for ``reset_after``, then
lets one trial call through (half-open): success closes it, failure opens it again.
Breakers are shared by every context of an engine, so one failing dependency is not
hammered by all runs at once. HTTP calls are side effects: make them inside a step.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from kflow._clock import Clock
from kflow._errors import CircuitOpenError

if TYPE_CHECKING:  # httpx costs ~70 ms to import: only code that makes requests pays
    import httpx

__all__ = ["CircuitBreakers", "HttpClient"]


@dataclass(slots=True)
class _Breaker:
    failures: int = 0
    opened_at: datetime | None = None
    trial_in_flight: bool = False


class CircuitBreakers:
    """The breaker state of every host, keyed by ``scheme://host:port``."""

    def __init__(
        self,
        clock: Clock,
        *,
        failure_threshold: int = 5,
        reset_after: timedelta = timedelta(seconds=30),
    ) -> None:
        self._clock = clock
        self.failure_threshold = failure_threshold
        self.reset_after = reset_after
        self._breakers: dict[str, _Breaker] = {}

    def state(self, host: str) -> str:
        b = self._breakers.get(host)
        if b is None or b.opened_at is None:
            return "closed"
        if self._clock.now() - b.opened_at >= self.reset_after:
            return "half-open"
        return "open"

    def before(self, host: str) -> bool:
        """Refuse a request to an open circuit; True when this request is the trial of a
        half-open one (its end, whatever it is, decides)."""
        state = self.state(host)
        b = self._breakers.setdefault(host, _Breaker())
        if state == "open":
            raise CircuitOpenError(
                f"circuit open for {host} after {b.failures} consecutive failures; "
                f"retrying after {self.reset_after}"
            )
        if state == "half-open" and b.trial_in_flight:
            raise CircuitOpenError(
                f"circuit open for {host}: a trial request is deciding whether it is back"
            )
        if state == "half-open":
            b.trial_in_flight = True
            return True
        return False

    def release(self, host: str) -> None:
        """A request ended without a verdict on the host: let the next one be the trial."""
        b = self._breakers.get(host)
        if b is not None:
            b.trial_in_flight = False

    def record(self, host: str, *, ok: bool) -> None:
        b = self._breakers.setdefault(host, _Breaker())
        b.trial_in_flight = False
        if ok:
            b.failures, b.opened_at = 0, None
            return
        b.failures += 1
        if b.failures >= self.failure_threshold or b.opened_at is not None:
            b.opened_at = self._clock.now()


class HttpClient:
    """The subset of `httpx.AsyncClient` a handler needs, behind the breakers."""

    def __init__(
        self, client: httpx.AsyncClient, breakers: CircuitBreakers, timeout: float | None
    ) -> None:
        self._client = client
        self._breakers = breakers
        self.timeout = timeout

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        import httpx

        host = str(httpx.URL(url).copy_with(path="/", query=None, fragment=None))
        trial = self._breakers.before(host)
        if self.timeout is not None:
            kwargs.setdefault("timeout", self.timeout)
        try:
            response = await self._client.request(method, url, **kwargs)
        except httpx.TransportError:
            self._breakers.record(host, ok=False)
            raise
        except BaseException:  # cancelled (a step timeout, a segment ending): no verdict
            if trial:
                self._breakers.release(host)
            raise
        self._breakers.record(host, ok=response.status_code < 500)
        return response

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", url, **kwargs)

    async def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("PUT", url, **kwargs)

    async def patch(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("PATCH", url, **kwargs)

    async def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("DELETE", url, **kwargs)
