"""The operator's health endpoints on ``KFLOW_HEALTH_PORT``, served in either role.

- ``GET /healthz``, liveness: 200 while the process runs and so does what its role runs
  (the leader's kopf operator; a standby's webhook server, if it serves one), with the
  role in the body: ``{"status": "ok", "role": "leader"}``; 503 while it starts (a
  probe's initial delay covers that). It never asks the database: a liveness probe that
  did would restart every replica during a database outage, which no restart fixes, and
  lose the hot standby into the bargain (kopf's documentation warns against exactly this
  for its own probes).
- ``GET /readyz``, readiness: 200 when the database answers within `READY_TIMEOUT`, else
  503 with the reason. An unready replica leaves the webhook Service's endpoints (and
  counts as disrupted for a PodDisruptionBudget) until the database is back.

An aiohttp server (kopf's own HTTP library); the API server's client side of aiohttp is
`kflow.controller.kube`'s alone. Each response closes its connection: a kept-alive probe
connection holds a task, and kopf's shutdown waits for every task started after it,
which would delay a standby's switch to leader.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

__all__ = ["READY_TIMEOUT", "Health"]

log = logging.getLogger(__name__)

READY_TIMEOUT = 2.0
"""Seconds the database has to answer ``/readyz``'s ``SELECT 1``; a probe's own timeout
(``timeoutSeconds``) should be longer, so that kflow's 503 says why."""


class Health:
    def __init__(self, port: int, *, ready_timeout: float = READY_TIMEOUT) -> None:
        self._port = port
        self._ready_timeout = ready_timeout
        self.readiness: Callable[[], Awaitable[object]] | None = None
        """What ``/readyz`` awaits (the store's ping); not ready before it is set."""
        self.role = "starting"
        self._task: asyncio.Task[Any] | None = None
        self._runner: web.AppRunner | None = None

    def serving(self, role: str, task: asyncio.Task[Any] | None) -> None:
        """This replica is in ``role`` now; it is alive while ``task`` (kopf) runs."""
        self.role, self._task = role, task

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "0.0.0.0", self._port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        task = self._task
        if self.role == "starting":
            return _answer(503, status="starting", role=self.role)
        if task is not None and task.done():
            return _answer(503, status="down", role=self.role, reason="kopf has stopped")
        return _answer(200, status="ok", role=self.role)

    async def _readyz(self, _: web.Request) -> web.Response:
        if self.readiness is None:
            return _answer(503, status="unready", role=self.role, reason="starting")
        try:
            async with asyncio.timeout(self._ready_timeout):
                await self.readiness()
        except TimeoutError:
            reason = f"the database did not answer in {self._ready_timeout:g}s"
            return _answer(503, status="unready", role=self.role, reason=reason)
        except Exception as exc:  # whatever the driver raises: the database is away
            return _answer(503, status="unready", role=self.role, reason=f"the database: {exc}")
        return _answer(200, status="ok", role=self.role)


def _answer(code: int, **body: str) -> web.Response:
    response = web.json_response(body, status=code)
    response.force_close()
    return response
