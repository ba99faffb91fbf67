"""Run lifecycle: binding, blocking, signatures, leases and fencing, deadlines, retire."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from pydantic import BaseModel

from kflow import (
    Engine,
    InvalidInput,
    KflowError,
    LeaseHeld,
    LeaseLost,
    Registry,
    RunNotFound,
    RunStatus,
    WorkflowContext,
    workflow,
)

pytestmark = pytest.mark.integration


class Item(BaseModel):
    sku: str
    count: int


def make_v1(steps: tuple[str, ...] = ("a",)):  # type: ignore[no-untyped-def]
    @workflow(name="versioned", version=1, steps=steps, events=["go"])
    async def v1(ctx: WorkflowContext, item: Item) -> str:
        await ctx.wait_for_event("go")
        return f"v1:{item.sku}"

    return v1


@workflow(name="versioned", version=2, events=["go"])
async def v2(ctx: WorkflowContext, item: Item) -> str:
    return f"v2:{item.sku}"


async def test_runs_bind_to_the_active_version_or_the_asked_one(make_env) -> None:
    v1 = make_v1()
    async with make_env(v1, v2) as env:
        latest = await env.execute("versioned", {"sku": "x", "count": 1})
        assert latest.output == "v2:x"
        pinned = await env.execute("versioned", {"sku": "y", "count": 1}, version=1)
        run = await env.run(pinned.run_id)
        assert pinned.status is RunStatus.WAITING
        assert run.workflow_version == 1 and run.signature == v1.signature


async def test_invalid_input_is_refused_naming_the_field(make_env) -> None:
    async with make_env(v2) as env:
        with pytest.raises(InvalidInput, match="count: Input should be a valid integer"):
            await env.engine.start(v2, {"sku": "x", "count": "many"})


async def test_start_is_idempotent_by_key(make_env) -> None:
    async with make_env(v2) as env:
        a = await env.engine.start(v2, {"sku": "x", "count": 1}, idempotency_key="cr-uid-1")
        b = await env.engine.start(v2, {"sku": "x", "count": 1}, idempotency_key="cr-uid-1")
        assert a.run_id == b.run_id


async def test_missing_handler_blocks_and_unblocks_when_it_appears(make_env) -> None:
    async with make_env() as env:
        run = await env.engine.start("versioned", {"sku": "z", "count": 1})
        blocked = await env.engine.run_segment(run.run_id)
        assert blocked.status is RunStatus.BLOCKED_MISSING_HANDLER
        assert "no handler for workflow 'versioned'" in (blocked.error or "")
        env.engine.registry.add(v2)  # a deploy brings the code
        done = await env.engine.run_segment(run.run_id)
        assert done.status is RunStatus.COMPLETED and done.output == "v2:z"


async def test_missing_version_blocks(make_env) -> None:
    async with make_env(v2) as env:
        run = await env.engine.start("versioned", {"sku": "z", "count": 1}, version=7)
        blocked = await env.engine.run_segment(run.run_id)
        assert blocked.status is RunStatus.BLOCKED_MISSING_VERSION
        assert "has no v7" in (blocked.error or "")


async def test_signature_mismatch_blocks_a_resumed_run(make_env) -> None:
    old = make_v1(steps=("a",))
    async with make_env(old) as env:
        waiting = await env.execute(old, {"sku": "s", "count": 1})
        assert waiting.status is RunStatus.WAITING
        changed = make_v1(steps=("a", "renamed"))  # same name and version, new contract
        assert changed.signature != old.signature
        redeployed = Engine(env.store, Registry(changed), clock=env.clock)
        await redeployed.send_event(waiting.run_id, "go")
        blocked = await redeployed.run_segment(waiting.run_id)
        await redeployed.close()
        assert blocked.status is RunStatus.BLOCKED_SIGNATURE_MISMATCH
        assert "changed without a new version" in (blocked.error or "")
        back = await env.engine.run_segment(waiting.run_id)  # the old code returns
        assert back.status is RunStatus.COMPLETED


async def test_a_held_lease_refuses_a_second_executor(make_env) -> None:
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def blocker() -> str:
        entered.set()
        await gate.wait()
        return "late"

    @workflow(name="contended", steps=["slow", "next"])
    async def wf(ctx: WorkflowContext) -> str:
        await ctx.step("slow", blocker)
        return await ctx.step("next", lambda: "second")

    async with make_env(wf) as env:
        run = await env.engine.start(wf)
        first = asyncio.create_task(env.engine.run_segment(run.run_id))
        await entered.wait()
        other = Engine(env.store, Registry(wf), clock=env.clock)
        with pytest.raises(LeaseHeld):
            await other.run_segment(run.run_id)
        # A takeover (the first executor is presumed dead) fences the first one out.
        stolen = asyncio.create_task(other.run_segment(run.run_id, steal=True))
        await asyncio.sleep(0.2)
        gate.set()
        assert (await stolen).status is RunStatus.COMPLETED
        with pytest.raises(LeaseLost):
            await first
        await other.close()
        run_after = await env.run(run.run_id)
        assert run_after.status is RunStatus.COMPLETED and run_after.output == "second"


async def test_stale_epoch_writes_are_refused(make_env) -> None:
    @workflow(name="fenced", events=["go"])
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.wait_for_event("go")

    async with make_env(wf) as env:
        run = await env.engine.start(wf)
        old = await env.store.acquire_lease(
            run.run_id, owner="a", now=env.clock.now(), ttl=timedelta(minutes=1), steal=False
        )
        new = await env.store.acquire_lease(
            run.run_id, owner="b", now=env.clock.now(), ttl=timedelta(minutes=1), steal=True
        )
        assert new.lease_epoch == old.lease_epoch + 1
        with pytest.raises(LeaseLost):
            await env.store.update_run(
                run.run_id, old.lease_epoch, now=env.clock.now(), status=RunStatus.COMPLETED
            )
        with pytest.raises(LeaseLost):
            await env.store.save_state(run.run_id, old.lease_epoch, "k", 1)
        assert (await env.run(run.run_id)).status is RunStatus.RUNNING


async def test_workflow_deadline_fails_a_sleeping_run(make_env) -> None:
    @workflow(name="bounded", timeout=timedelta(hours=1))
    async def wf(ctx: WorkflowContext) -> str:
        await ctx.sleep(timedelta(days=1))
        return "never"

    async with make_env(wf) as env:
        start = env.clock.now()
        waiting = await env.engine.run_segment((await env.engine.start(wf)).run_id)
        assert waiting.ready_at == start + timedelta(hours=1)  # woken at the deadline
        outcome = await env.drive(waiting.run_id)
        assert outcome.status is RunStatus.FAILED
        assert (outcome.error or "").startswith("WorkflowTimeout")


async def test_retire_and_unknown_runs(make_env) -> None:
    async with make_env(v2) as env:
        run = await env.engine.start("versioned", {"sku": "q", "count": 1}, version=9)
        await env.engine.run_segment(run.run_id)
        retired = await env.engine.retire(run.run_id, "v9 will never ship")
        assert retired.status is RunStatus.RETIRED_UNRESUMABLE
        stored = await env.run(run.run_id)
        assert stored.error == "retired: v9 will never ship"
        assert stored.completed_at is not None  # its WorkflowRun's TTL counts from here
        with pytest.raises(RunNotFound):
            await env.engine.run_segment(uuid.uuid4())


async def test_a_long_segment_keeps_its_lease_alive(make_env) -> None:
    @workflow(name="long-segment", steps=["slow"])
    async def wf(ctx: WorkflowContext) -> str:
        await ctx.step("slow", asyncio.sleep, 1.0)
        return "done"

    async with make_env(wf) as env:
        real_time = {"lease_ttl": timedelta(seconds=0.3)}
        busy = Engine(env.store, Registry(wf), **real_time)  # type: ignore[arg-type]
        other = Engine(env.store, Registry(wf), **real_time)  # type: ignore[arg-type]
        run = await busy.start(wf)
        segment = asyncio.create_task(busy.run_segment(run.run_id))
        await asyncio.sleep(0.7)  # more than twice the TTL: only renewals keep it held
        with pytest.raises(LeaseHeld):
            await other.run_segment(run.run_id)
        assert (await segment).status is RunStatus.COMPLETED
        await busy.close()
        await other.close()


async def test_retry_reruns_failed_steps_and_keeps_completed_ones(make_env) -> None:
    calls: list[str] = []
    broken = {"yes": True}

    def first() -> str:
        calls.append("first")
        return "one"

    def second() -> str:
        calls.append("second")
        if broken["yes"]:
            raise RuntimeError("dependency down")
        return "two"

    @workflow(name="retryable", steps=["first", "second"], timeout=timedelta(hours=1))
    async def wf(ctx: WorkflowContext) -> list[str]:
        return [await ctx.step("first", first), await ctx.step("second", second)]

    async with make_env(wf) as env:
        failed = await env.execute(wf)
        assert failed.status is RunStatus.FAILED
        env.clock.advance(timedelta(hours=2))  # past the first deadline, too
        broken["yes"] = False
        ready = await env.engine.retry(failed.run_id)
        assert ready.status is RunStatus.WAITING and ready.ready_at == env.clock.now()
        done = await env.drive(failed.run_id)
        assert done.status is RunStatus.COMPLETED and done.output == ["one", "two"]
        assert calls == ["first", "second", "second"]
        with pytest.raises(KflowError, match="only Failed or Blocked runs retry"):
            await env.engine.retry(failed.run_id)
