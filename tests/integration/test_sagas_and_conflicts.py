"""Sagas that undo themselves, and conflicts refused rather than resolved silently
(issue 13), on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from kflow import (
    Engine,
    Registry,
    RunConflict,
    RunStatus,
    StepStatus,
    WorkflowContext,
    compensation,
    workflow,
)

pytestmark = pytest.mark.integration

undone: list[str] = []
fail_release = {"on": False}


@pytest.fixture(autouse=True)
def _reset() -> None:
    undone.clear()
    fail_release["on"] = False


@compensation("undo-reserve")
async def release(ctx: WorkflowContext, reservation: str) -> None:
    if fail_release["on"]:
        raise RuntimeError("the warehouse is down")
    undone.append(reservation)


@compensation("undo-charge")
async def refund(ctx: WorkflowContext, charge: str) -> None:
    undone.append(charge)


def no_courier() -> str:
    raise ValueError("no courier")


@workflow(name="order-saga", steps=["reserve", "charge", "ship"])
async def order(ctx: WorkflowContext) -> str:
    await ctx.step("reserve", lambda: "r-1", compensate=release)
    await ctx.step("charge", lambda: "c-1", compensate=refund)
    return await ctx.step("ship", no_courier)


@workflow(name="order-saga-kept", steps=["reserve", "charge", "ship"], compensate_on_failure=False)
async def kept(ctx: WorkflowContext) -> str:
    await ctx.step("reserve", lambda: "r-1", compensate=release)
    await ctx.step("charge", lambda: "c-1", compensate=refund)
    return await ctx.step("ship", no_courier)


async def test_a_failed_saga_undoes_its_completed_steps_in_reverse(make_env) -> None:
    async with make_env(order, release, refund) as env:
        done = await env.execute(order)
        assert done.status is RunStatus.COMPENSATED, done
        assert undone == ["c-1", "r-1"]
        assert (done.error or "").startswith("undone after a failure: StepFailed: step 'ship'")
        states = {s.key: s.status for s in await env.history(done.run_id)}
        assert states["reserve"] is states["charge"] is StepStatus.COMPENSATED
        assert states["ship"] is StepStatus.FAILED


async def test_a_workflow_can_keep_its_steps_when_it_fails(make_env) -> None:
    async with make_env(kept, release, refund) as env:
        done = await env.execute(kept)
        assert done.status is RunStatus.FAILED and undone == []
        # ... until it is cancelled: a cancel undoes what a Failed run left done.
        cancelled = await env.engine.cancel(done.run_id, "clean up")
        assert cancelled.status is RunStatus.COMPENSATED, cancelled
        assert undone == ["c-1", "r-1"]
        assert cancelled.error == (
            "cancelled: clean up (after it failed: StepFailed: step 'ship' failed: "
            "ValueError: no courier)"
        )
        again = await env.engine.cancel(done.run_id, "twice")  # nothing left to undo
        assert again.status is RunStatus.COMPENSATED and undone == ["c-1", "r-1"]


async def test_a_compensation_that_fails_fails_the_run_naming_it_and_retry_finishes(
    make_env,
) -> None:
    fail_release["on"] = True
    async with make_env(order, release, refund) as env:
        done = await env.execute(order)
        assert done.status is RunStatus.FAILED
        assert "compensation failed for reserve" in (done.error or "")
        assert "the warehouse is down" in (done.error or "")
        assert undone == ["c-1"]
        fail_release["on"] = False
        retried = await env.engine.retry(done.run_id)
        assert retried.status is RunStatus.COMPENSATING  # the handler does not run again
        finished = await env.drive(done.run_id)
        assert finished.status is RunStatus.COMPENSATED and undone == ["c-1", "r-1"]


async def test_a_failure_in_a_gather_undoes_the_siblings_that_completed(make_env) -> None:
    @workflow(name="fan-out-saga", steps=["reserve", "charge", "ship"])
    async def fan_out(ctx: WorkflowContext) -> object:
        reserve = asyncio.ensure_future(ctx.step("reserve", lambda: "r-1", compensate=release))
        charge = asyncio.ensure_future(ctx.step("charge", lambda: "c-1", compensate=refund))

        async def ship() -> str:
            await asyncio.wait([reserve, charge])  # the siblings complete first
            return await ctx.step("ship", no_courier)

        return await asyncio.gather(reserve, charge, ship())

    async with make_env(fan_out, release, refund) as env:
        done = await env.execute(fan_out)
        assert done.status is RunStatus.COMPENSATED, done
        assert sorted(undone) == ["c-1", "r-1"]


async def test_a_second_cancel_while_compensating_keeps_the_first_reason(make_env) -> None:
    async with make_env(order, release, refund) as env:
        waiting = await env.engine.start(order)
        marked = await env.engine.cancel(waiting.run_id, "first", compensate=False)
        assert marked.status is RunStatus.COMPENSATING
        done = await env.engine.cancel(waiting.run_id, "second")
        assert done.error == "cancelled: first"


async def test_a_run_id_or_key_with_another_input_is_a_conflict(make_env) -> None:
    async with make_env(order, kept, release, refund) as env:
        run_id = uuid.uuid4()
        first = await env.engine.start(order, None, run_id=run_id, idempotency_key="o-1")
        same = await env.engine.start(order, None, run_id=run_id, idempotency_key="o-1")
        assert same.run_id == first.run_id  # the same request: the same run
        with pytest.raises(RunConflict, match=rf"run {run_id} .* exists with another input"):
            await env.engine.start(order, {"other": 1}, idempotency_key="o-1")
        with pytest.raises(RunConflict, match="exists with another workflow") as caught:
            await env.engine.start(kept, None, run_id=run_id)
        assert caught.value.existing.run_id == run_id
        with pytest.raises(RunConflict, match="another version"):
            await env.engine.start(order, None, version=2, run_id=run_id)


def _reordered(steps: list[str], returns: str) -> object:
    @workflow(name="registered", steps=steps)
    async def handler(ctx: WorkflowContext) -> str:
        await ctx.sleep(timedelta(seconds=5))
        return returns

    return handler


async def test_a_version_recorded_with_another_contract_is_refused_not_overwritten(
    make_env,
) -> None:
    first = _reordered(["a", "b"], "first")
    changed = _reordered(["a", "c"], "changed")  # same name and version, other steps
    async with make_env(first) as env:
        assert await env.engine.register_definitions() == []
        run = await env.engine.start(first)
        other = Engine(env.store, Registry(changed), clock=env.clock)  # type: ignore[arg-type]
        conflicts = await other.register_definitions()
        assert [(c.name, c.version, c.stored, c.code) for c in conflicts] == [
            ("registered", 1, first.signature, changed.signature)  # type: ignore[attr-defined]
        ]
        fresh = await other.start(changed)  # type: ignore[arg-type]
        blocked = await other.run_segment(fresh.run_id)
        assert blocked.status is RunStatus.BLOCKED_SIGNATURE_MISMATCH
        assert "is recorded with signature" in (blocked.error or "")
        assert first.signature[:12] in (blocked.error or "")  # type: ignore[attr-defined]
        # The record was kept: the first code still registers cleanly and runs its runs.
        assert await env.engine.register_definitions() == []
        assert (await env.drive(run.run_id)).output == "first"


async def test_the_order_of_declared_steps_does_not_block_runs(make_env) -> None:
    ab, ba = _reordered(["a", "b"], "ab"), _reordered(["b", "a"], "ba")
    async with make_env(ab) as env:
        run = await env.engine.start(ab)
        await env.engine.run_segment(run.run_id)
        reordered = Engine(env.store, Registry(ba), clock=env.clock)  # type: ignore[arg-type]
        assert await reordered.register_definitions() == []
        await env.clock.sleep(10)
        assert (await reordered.run_segment(run.run_id)).output == "ba"
        # A run bound under the first scheme (names in declaration order) resumes too.
        legacy = await env.engine.start(
            "registered",
            None,
            version=1,
            signature=ba.legacy_signature,  # type: ignore[attr-defined]
        )
        await reordered.run_segment(legacy.run_id)
        await env.clock.sleep(10)
        assert (await reordered.run_segment(legacy.run_id)).status is RunStatus.COMPLETED


async def test_a_segment_of_a_finished_run_changes_nothing(make_env) -> None:
    async with make_env(order, release, refund) as env:
        done = await env.execute(order)
        before = await env.engine.get_run(done.run_id)
        again = await env.engine.run_segment(done.run_id)
        after = await env.engine.get_run(done.run_id)
        assert again.status is before.status is RunStatus.COMPENSATED
        assert after == before  # segments, lease epoch and owner, every column


async def test_kv_entries_are_the_tenants_own(make_env) -> None:
    @workflow(name="kv-tenant", steps=[])
    async def remember(ctx: WorkflowContext, value: str) -> object:
        seen = await ctx.kv.get("last")
        await ctx.kv.set("last", value)
        return seen

    team_a, team_b = uuid.uuid4(), uuid.uuid4()
    async with make_env(remember) as env:
        assert (await env.execute(remember, "a1", tenant_id=team_a)).output is None
        assert (await env.execute(remember, "b1", tenant_id=team_b)).output is None
        assert (await env.execute(remember, "a2", tenant_id=team_a)).output == "a1"
        assert (await env.execute(remember, "x1")).output is None  # no tenant: its own


async def test_a_failure_in_a_task_group_undoes_the_tasks_that_completed(make_env) -> None:
    @workflow(name="task-group-saga", steps=["reserve", "charge", "ship"])
    async def grouped(ctx: WorkflowContext) -> str:
        async with asyncio.TaskGroup() as group:
            reserve = group.create_task(ctx.step("reserve", lambda: "r-1", compensate=release))
            charge = group.create_task(ctx.step("charge", lambda: "c-1", compensate=refund))

            async def ship() -> str:
                await asyncio.wait([reserve, charge])  # the other tasks complete first
                return await ctx.step("ship", no_courier)

            group.create_task(ship())
        return "shipped"

    async with make_env(grouped, release, refund) as env:
        done = await env.execute(grouped)
        assert done.status is RunStatus.COMPENSATED, done
        assert sorted(undone) == ["c-1", "r-1"]
        assert "step 'ship#t3-1' failed" in (done.error or "")  # keyed per task
