"""Sleeps: persisted wake times, one per call, virtual time, deterministic clocks."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from kflow import RunStatus, WorkflowContext, workflow

pytestmark = pytest.mark.integration


async def test_thirty_day_sleep_completes_at_once_in_virtual_time(make_env) -> None:
    flags: list[tuple[bool, bool]] = []

    @workflow(name="month", steps=["before", "after"])
    async def wf(ctx: WorkflowContext) -> int:
        flags.append((ctx.is_resumed, ctx.resumed_from_sleep))
        await ctx.step("before", lambda: 1)
        await ctx.sleep(timedelta(days=30))
        await ctx.step("after", lambda: 2)
        return ctx.elapsed().days

    async with make_env(wf) as env:
        start = env.clock.now()
        outcome = await env.execute(wf)
        assert outcome.status is RunStatus.COMPLETED and outcome.output == 30
        assert env.clock.now() - start == timedelta(days=30)
        assert flags == [(False, False), (True, True)]


async def test_early_resume_sleeps_again_until_the_wake_time(make_env) -> None:
    @workflow(name="nap")
    async def wf(ctx: WorkflowContext) -> str:
        await ctx.sleep(timedelta(hours=2))
        return "awake"

    async with make_env(wf) as env:
        run = await env.engine.start(wf)
        first = await env.engine.run_segment(run.run_id)
        wake = first.ready_at
        assert first.status is RunStatus.WAITING and wake is not None
        env.clock.advance(timedelta(hours=1))
        early = await env.engine.run_segment(run.run_id)
        assert early.status is RunStatus.WAITING and early.ready_at == wake
        env.clock.advance(timedelta(hours=1))
        done = await env.engine.run_segment(run.run_id)
        assert done.status is RunStatus.COMPLETED


async def test_each_sleep_call_is_its_own_timer(make_env) -> None:
    @workflow(name="naps")
    async def wf(ctx: WorkflowContext) -> int:
        for _ in range(3):
            await ctx.sleep(timedelta(minutes=10))
        return ctx.elapsed().seconds // 60

    async with make_env(wf) as env:
        outcome = await env.execute(wf)
        assert outcome.output == 30
        assert (await env.run(outcome.run_id)).segments == 4


async def test_sleep_until_in_the_past_returns_at_once(make_env) -> None:
    @workflow(name="past")
    async def wf(ctx: WorkflowContext) -> str:
        await ctx.sleep_until(ctx.workflow_time() - timedelta(days=1))
        await ctx.sleep(timedelta(0))
        await ctx.sleep_until(ctx.workflow_time() + timedelta(days=1))
        return "ok"

    async with make_env(wf) as env:
        outcome = await env.execute(wf)
        assert outcome.output == "ok"
        assert (await env.run(outcome.run_id)).segments == 2


async def test_workflow_time_is_deterministic_across_replays(make_env) -> None:
    times: list[list[str]] = []

    @workflow(name="clocked", steps=["s"])
    async def wf(ctx: WorkflowContext) -> None:
        seen = [ctx.workflow_time().isoformat()]
        await ctx.step("s", lambda: None)
        seen.append(ctx.workflow_time().isoformat())
        times.append(seen)
        await ctx.sleep(timedelta(hours=5))
        times.append([ctx.workflow_time().isoformat()])

    async with make_env(wf) as env:
        run = await env.engine.start(wf)
        await env.engine.run_segment(run.run_id)
        env.clock.advance(timedelta(hours=7))  # resumed late: time still reads the wake time
        await env.engine.run_segment(run.run_id)
        assert times[0] == times[1]
        woke = datetime.fromisoformat(times[2][0]) - datetime.fromisoformat(times[0][0])
        assert woke == timedelta(hours=5)
