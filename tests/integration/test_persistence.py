"""Persistence errors propagate: no step, no run outcome on state the database has not seen."""

from __future__ import annotations

import pytest

from kflow import PersistenceError, RunStatus, Store, WorkflowContext, workflow
from kflow.dev.postgres import free_port

pytestmark = pytest.mark.integration


async def test_a_failed_step_write_stops_the_segment(make_env) -> None:
    calls: list[str] = []
    swallowed: list[BaseException] = []

    @workflow(name="doomed", steps=["breaks", "after"])
    async def wf(ctx: WorkflowContext) -> str:
        async def breaks() -> str:
            calls.append("breaks")
            if len(calls) == 1:  # the database loses the table under the engine's feet
                await env.store.pool.execute("ALTER TABLE steps RENAME TO steps_gone")
            return "ok"

        try:
            await ctx.step("breaks", breaks)
        except Exception as exc:  # user code that swallows errors must not help
            swallowed.append(exc)
        await ctx.step("after", lambda: calls.append("after"))
        return "completed?"

    async with make_env(wf) as env:
        run = await env.engine.start(wf)
        with pytest.raises(PersistenceError, match="steps"):
            await env.engine.run_segment(run.run_id)
        assert isinstance(swallowed[0], PersistenceError)
        assert calls == ["breaks"]  # "after" never ran
        await env.store.pool.execute("ALTER TABLE steps_gone RENAME TO steps")
        assert await env.history(run.run_id) == []
        assert (await env.run(run.run_id)).status is RunStatus.RUNNING

        outcome = await env.engine.run_segment(run.run_id)  # the failed segment let go
        assert outcome.status is RunStatus.COMPLETED
        assert calls == ["breaks", "breaks", "after"]


async def test_failed_outcome_write_propagates(make_env) -> None:
    @workflow(name="no-outcome")
    async def wf(ctx: WorkflowContext) -> str:
        await env.store.pool.execute("ALTER TABLE runs RENAME COLUMN output TO output_gone")
        return "done"

    async with make_env(wf) as env:
        run = await env.engine.start(wf)
        with pytest.raises(PersistenceError, match="output"):
            await env.engine.run_segment(run.run_id)
        await env.store.pool.execute("ALTER TABLE runs RENAME COLUMN output_gone TO output")
        assert (await env.run(run.run_id)).status is RunStatus.RUNNING


async def test_unreachable_database_is_a_persistence_error() -> None:
    with pytest.raises(PersistenceError, match="cannot open the kflow store"):
        await Store.open(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")


async def test_save_state_and_kv_survive_segments(make_env) -> None:
    @workflow(name="stateful", events=["go"])
    async def wf(ctx: WorkflowContext) -> dict[str, object]:
        if ctx.load_state("first_seen") is None:
            await ctx.save_state("first_seen", ctx.workflow_time())
            await ctx.kv.set("counter", 1)
        await ctx.wait_for_event("go")
        await ctx.kv.set("counter", await ctx.kv.get("counter", int) + 1)
        return {
            "state": sorted(ctx.take_saved_state()),
            "counter": await ctx.kv.get("counter"),
            "keys": await ctx.kv.keys(),
            "missing": await ctx.kv.get("nope", default="dflt"),
        }

    async with make_env(wf) as env:
        waiting = await env.execute(wf)
        await env.send_event(waiting.run_id, "go")
        done = await env.drive(waiting.run_id)
        assert done.output == {
            "state": ["first_seen"],
            "counter": 2,
            "keys": ["counter"],
            "missing": "dflt",
        }
