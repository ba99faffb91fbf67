"""The documented contract, exactly (issue 13): the same values live and on replay,
history the code cannot read blocks the run, blocking steps stay off the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timedelta

import pytest
from pydantic import BaseModel

from kflow import (
    Engine,
    Registry,
    RetryPolicy,
    RunStatus,
    StepStatus,
    WorkflowContext,
    workflow,
)

pytestmark = pytest.mark.integration


class Item(BaseModel):
    sku: str


def make_item() -> Item:
    return {"sku": "x"}  # type: ignore[return-value]  # what a JSON API client returns


def one() -> float:
    return 1  # an int where a float is declared


async def test_a_typed_step_gives_the_same_value_live_and_on_replay(make_env) -> None:
    seen: list[tuple[str, str, float]] = []

    @workflow(name="typed-replay", steps=["item", "num"])
    async def typed(ctx: WorkflowContext) -> str:
        item = await ctx.step("item", make_item)
        num = await ctx.step("num", one)
        seen.append((type(item).__name__, type(num).__name__, num))
        await ctx.sleep(timedelta(seconds=5))
        return item.sku

    async with make_env(typed) as env:
        done = await env.execute(typed)
    assert (done.status, done.output) == (RunStatus.COMPLETED, "x")
    assert seen == [("Item", "float", 1.0), ("Item", "float", 1.0)]  # first run, replay


async def test_a_result_that_does_not_fit_its_type_fails_the_step_naming_the_field(
    make_env,
) -> None:
    calls: list[int] = []

    async def bad_item() -> Item:
        calls.append(1)
        return {"name": "x"}  # type: ignore[return-value]

    @workflow(name="misfit", steps=["item"])
    async def misfit(ctx: WorkflowContext) -> str:
        return (await ctx.step("item", bad_item, retry=RetryPolicy(max_attempts=3))).sku

    async with make_env(misfit) as env:
        done = await env.execute(misfit)
    assert done.status is RunStatus.FAILED
    assert "step 'item'" in (done.error or "") and "ResultTypeError" in (done.error or "")
    assert "does not fit its declared type Item: sku: Field required" in (done.error or "")
    assert calls == [1]  # not retried: the same code returns the same misfit


def _versions(returns: type) -> tuple[object, list[int]]:
    """The same workflow (name, version, steps, signature) with its step declaring
    another result type: code changed under a version."""
    ran: list[int] = []

    async def count():  # type: ignore[no-untyped-def]
        ran.append(1)
        return 5

    count.__annotations__["return"] = returns  # a real type (this module's are strings)

    @workflow(name="changed-under-me", steps=["count"])
    async def changed(ctx: WorkflowContext) -> str:
        try:
            n = await ctx.step("count", count)
        except Exception as exc:  # a handler cannot go on past history it cannot read
            return f"swallowed {exc}"
        await ctx.sleep(timedelta(seconds=5))
        return f"counted {n}"

    return changed, ran


async def test_a_recorded_result_the_code_no_longer_reads_blocks_the_run_until_a_retry(
    make_env,
) -> None:
    old, old_ran = _versions(int)
    new, new_ran = _versions(Item)
    async with make_env(old) as env:
        run = await env.engine.start(old)
        first = await env.engine.run_segment(run.run_id)
        assert first.status is RunStatus.WAITING and old_ran == [1]
        await env.clock.sleep(10)
        deployed = Engine(env.store, Registry(new), clock=env.clock)  # type: ignore[arg-type]
        blocked = await deployed.run_segment(run.run_id)
        assert blocked.status is RunStatus.BLOCKED_SIGNATURE_MISMATCH, blocked
        error = blocked.error or ""
        assert "step 'count': its recorded result no longer fits its declared type Item" in error
        assert "Deploy the code the run started with" in error and "retry" in error
        assert new_ran == []  # the completed step never runs again
        # The old code back, a retry resumes the run where it was.
        await env.engine.retry(run.run_id)
        done = await env.drive(run.run_id)
        assert (done.status, done.output) == (RunStatus.COMPLETED, "counted 5")
        assert old_ran == [1]
        steps = {s.key: s for s in await env.history(run.run_id)}
        assert steps["count"].status is StepStatus.COMPLETED and steps["count"].attempts == 1


async def test_a_blocking_step_runs_off_the_loop_and_keeps_its_timeout(make_env) -> None:
    threads: list[str] = []

    def slow() -> str:
        threads.append(threading.current_thread().name)
        time.sleep(0.5)  # blocks its thread, not the event loop
        return "late"

    @workflow(name="blocking-step", steps=["slow"])
    async def blocking(ctx: WorkflowContext) -> str:
        return await ctx.step("slow", slow, timeout=timedelta(seconds=0.1))

    async with make_env(blocking) as env:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        done = await env.execute(blocking)
        ticker.cancel()
    assert done.status is RunStatus.FAILED
    assert "StepTimeout: attempt exceeded its timeout of 0:00:00.100000" in (done.error or "")
    assert threads and threads[0] != threading.main_thread().name
    assert ticks >= 5  # the loop went on while the step blocked


async def test_sleep_until_refuses_a_naive_datetime_at_the_call(make_env) -> None:
    @workflow(name="naive-sleep", steps=[])
    async def naive(ctx: WorkflowContext) -> str:
        try:
            await ctx.sleep_until(datetime(2030, 1, 1))
        except TypeError as exc:
            return str(exc)
        return "slept"

    async with make_env(naive) as env:
        done = await env.execute(naive)
    assert done.status is RunStatus.COMPLETED
    assert "sleep_until(wake_at=datetime.datetime(2030, 1, 1, 0, 0)): wake_at has no time zone" in (
        done.output or ""
    )


async def test_a_workflow_timeout_under_the_virtual_clock_says_so(make_env) -> None:
    @workflow(name="slow-workflow", steps=["wait"], timeout=timedelta(milliseconds=50))
    async def slow_workflow(ctx: WorkflowContext) -> str:
        await ctx.step("wait", asyncio.sleep, 5)  # real time, past the (virtual) deadline
        return "done"

    async with make_env(slow_workflow) as env:
        done = await env.execute(slow_workflow)
    assert done.status is RunStatus.FAILED
    assert (done.error or "").startswith("WorkflowTimeout: run passed its deadline"), done.error
