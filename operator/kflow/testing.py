"""`WorkflowTestEnv`: run your workflows in tests on a real PostgreSQL, in virtual time.

::

    async with WorkflowTestEnv.start(fulfil, release_stock) as env:
        run = await env.execute(fulfil, Order(id="o-1", amount_cents=1200))
        assert run.status is RunStatus.WAITING          # waits for "payment-confirmed"
        await env.send_event(run.run_id, "payment-confirmed", {"ref": "ch_1"})
        done = await env.drive(run.run_id)
        assert done.status is RunStatus.COMPLETED

The environment gets its own schema in the database (dropped on exit), so tests can share
one server. With no ``dsn`` it uses ``$KFLOW_TEST_DSN``, or starts a throw-away server
(`kflow.dev.postgres.LocalPostgres`, which needs Debian's PostgreSQL binaries). Its clock is a
`VirtualClock`: `drive` jumps it to each sleep's end, so a 30-day sleep passes at once.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

from kflow._clock import VirtualClock
from kflow._engine import Engine
from kflow._models import RunRecord, RunStatus, SegmentOutcome, StepState
from kflow._store import SendResult, Store
from kflow._workflow import CompensationDefinition, Registry, WorkflowDefinition
from kflow.dev.postgres import LocalPostgres

__all__ = ["WorkflowTestEnv"]


class WorkflowTestEnv:
    """An engine on a private schema, with a clock tests control."""

    def __init__(self, engine: Engine, clock: VirtualClock) -> None:
        self.engine = engine
        self.clock = clock
        self.store = engine.store

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls,
        *definitions: WorkflowDefinition | CompensationDefinition | Registry,
        dsn: str | None = None,
        clock: VirtualClock | None = None,
        **engine_options: Any,
    ) -> AsyncIterator[WorkflowTestEnv]:
        """Open an environment for ``definitions`` (or a ready `Registry`)."""
        registry = next((d for d in definitions if isinstance(d, Registry)), None)
        if registry is None:
            registry = Registry(*(d for d in definitions if not isinstance(d, Registry)))
        async with contextlib.AsyncExitStack() as stack:
            dsn = dsn or os.environ.get("KFLOW_TEST_DSN")
            if dsn is None:
                dsn = stack.enter_context(LocalPostgres()).dsn
            store = await Store.open(dsn, schema=f"kflow_test_{uuid.uuid4().hex[:12]}")
            stack.push_async_callback(store.close)
            stack.push_async_callback(store.drop)
            clock = clock or VirtualClock()
            engine = Engine(store, registry, clock=clock, **engine_options)
            stack.push_async_callback(engine.close)
            yield cls(engine, clock)

    async def execute(
        self, workflow: str | WorkflowDefinition, input: Any = None, **options: Any
    ) -> SegmentOutcome:
        """Start a run and `drive` it."""
        run = await self.engine.start(workflow, input, **options)
        return await self.drive(run.run_id)

    async def drive(
        self, run_id: uuid.UUID, *, through_event_timeouts: bool = False, max_segments: int = 1000
    ) -> SegmentOutcome:
        """Advance the run until it finishes, blocks or waits for an event; sleeps and
        retry backoffs are waited out on the clock (at once when it is virtual). With
        ``through_event_timeouts``, event deadlines are waited out too."""
        for _ in range(max_segments):
            outcome = await self.engine.run_segment(run_id)
            if outcome.status != RunStatus.WAITING or outcome.ready_at is None:
                return outcome
            at_event = outcome.waiting_event and not through_event_timeouts
            if at_event and outcome.ready_at > self.clock.now():
                return outcome
            delay = (outcome.ready_at - self.clock.now()).total_seconds()
            if delay > 0:
                await self.clock.sleep(delay)
        raise RuntimeError(f"run {run_id} did not settle within {max_segments} segments")

    async def send_event(
        self, run_id: uuid.UUID, name: str, payload: Any = None, *, dedupe_key: str | None = None
    ) -> SendResult:
        return await self.engine.send_event(run_id, name, payload, dedupe_key=dedupe_key)

    async def run(self, run_id: uuid.UUID) -> RunRecord:
        return await self.engine.get_run(run_id)

    async def history(self, run_id: uuid.UUID) -> list[StepState]:
        return await self.engine.history(run_id)
