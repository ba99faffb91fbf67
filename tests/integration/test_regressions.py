"""Regressions found by review: each test failed before its fix."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from pydantic import BaseModel

from kflow import (
    EventTimeout,
    KflowError,
    PersistenceError,
    RunStatus,
    StepStatus,
    WorkflowContext,
    compensation,
    workflow,
)
from kflow._engine import SegmentEnded

pytestmark = pytest.mark.integration

undone: list[object] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    undone.clear()


@compensation("refund-once")
async def refund(ctx: WorkflowContext, charge: str) -> None:
    undone.append(charge)


@compensation("unreserve-qty")
async def unreserve(ctx: WorkflowContext, qty: int) -> None:
    undone.append(qty)


@workflow(
    name="bounded-pay", steps=["charge", "after"], events=["go"], timeout=timedelta(seconds=10)
)
async def bounded_pay(ctx: WorkflowContext) -> str:
    await ctx.step("charge", lambda: "ch_1", compensate=refund)
    await ctx.wait_for_event("go")
    await ctx.step("after", lambda: undone.append("after ran") or "x")
    return "done"


async def test_cancel_after_the_deadline_compensates_once_and_ends(make_env) -> None:
    async with make_env(bounded_pay, refund) as env:
        waiting = await env.execute(bounded_pay)
        env.clock.advance(timedelta(seconds=20))  # nobody woke it at its deadline
        outcome = await env.engine.cancel(waiting.run_id, "stop")
        assert outcome.status is RunStatus.COMPENSATED
        assert undone == ["ch_1"]
        run = await env.run(waiting.run_id)
        assert run.lease_owner is None


async def test_a_refused_retry_leaves_the_run_as_it_was(make_env) -> None:
    async with make_env(bounded_pay, refund) as env:
        waiting = await env.execute(bounded_pay)
        with pytest.raises(KflowError, match="is Waiting: only Failed or Blocked runs retry"):
            await env.engine.retry(waiting.run_id)
        run = await env.run(waiting.run_id)
        assert run.status is RunStatus.WAITING and run.lease_owner is None
        sent = await env.send_event(waiting.run_id, "go")
        assert sent.wakes_run


async def test_retry_after_a_failed_cancel_finishes_undoing_never_goes_forward(make_env) -> None:
    flaky = {"down": True}

    @compensation("flaky-refund")
    async def flaky_refund(ctx: WorkflowContext, charge: str) -> None:
        if flaky["down"]:
            raise ConnectionError("refund API down")
        undone.append(charge)

    @workflow(name="saga-retry", steps=["charge", "ship"], events=["go"])
    async def saga(ctx: WorkflowContext) -> str:
        await ctx.step("charge", lambda: "ch_2", compensate=flaky_refund)
        await ctx.wait_for_event("go")
        await ctx.step("ship", lambda: undone.append("shipped") or "s")
        return "done"

    async with make_env(saga, flaky_refund) as env:
        waiting = await env.execute(saga)
        failed = await env.engine.cancel(waiting.run_id, "stop")
        assert failed.status is RunStatus.FAILED
        flaky["down"] = False
        again = await env.engine.retry(waiting.run_id)
        assert again.status is RunStatus.COMPENSATING
        done = await env.drive(waiting.run_id)
        assert done.status is RunStatus.COMPENSATED
        assert undone == ["ch_2"]


async def test_a_cancel_whose_executor_gave_up_before_undoing_retries_the_undoing(
    make_env,
) -> None:
    # The pod executor: cancel marks the run, then the compensation Pods never start.
    async with make_env(bounded_pay, refund) as env:
        waiting = await env.execute(bounded_pay)
        marked = await env.engine.cancel(waiting.run_id, "stop", compensate=False)
        assert marked.status is RunStatus.COMPENSATING and undone == []
        failed = await env.engine.fail(waiting.run_id, "its segment failed 4 times in a row")
        assert failed.status is RunStatus.FAILED
        assert failed.error == "cancelled: stop; its segment failed 4 times in a row"
        again = await env.engine.retry(waiting.run_id)
        assert again.status is RunStatus.COMPENSATING  # never forward: the order was cancelled
        done = await env.drive(waiting.run_id)
        assert done.status is RunStatus.COMPENSATED and undone == ["ch_1"]


async def test_compensation_arguments_that_no_longer_fit_fail_only_that_compensation(
    make_env,
) -> None:
    @workflow(name="bad-args", steps=["reserve", "charge"], events=["go"])
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step("reserve", lambda: 1, compensate=("unreserve-qty", "three"))
        await ctx.step("charge", lambda: "ch_3", compensate=refund)
        await ctx.wait_for_event("go")

    async with make_env(wf, refund, unreserve) as env:
        waiting = await env.execute(wf)
        outcome = await env.engine.cancel(waiting.run_id, "stop")
        assert outcome.status is RunStatus.FAILED
        assert "compensation failed for reserve" in (outcome.error or "")
        assert undone == ["ch_3"]
        assert (await env.run(waiting.run_id)).lease_owner is None


async def test_a_cancel_that_crashed_after_undoing_everything_ends_compensated(make_env) -> None:
    async with make_env(bounded_pay, refund) as env:
        waiting = await env.execute(bounded_pay)
        store = env.engine.store
        update_run = store.update_run

        async def crash_once(*args, **fields):  # type: ignore[no-untyped-def]
            if fields.get("status") is RunStatus.COMPENSATED:
                store.update_run = update_run  # type: ignore[method-assign]
                raise PersistenceError("the process died before recording the outcome")
            return await update_run(*args, **fields)

        store.update_run = crash_once  # type: ignore[method-assign]
        with pytest.raises(PersistenceError):
            await env.engine.cancel(waiting.run_id, "stop")
        again = await env.engine.run_segment(waiting.run_id)
        assert again.status is RunStatus.COMPENSATED
        assert undone == ["ch_1"]


async def test_a_step_that_ends_after_the_deadline_keeps_its_result(make_env) -> None:
    ran: list[str] = []

    @workflow(name="late-step", steps=["pay", "next"], timeout=timedelta(seconds=10))
    async def wf(ctx: WorkflowContext) -> str:
        async def pay() -> str:
            ran.append("pay")
            await env.clock.sleep(11)  # the deadline passes while the step runs
            return "paid"

        await ctx.step("pay", pay)
        await ctx.step("next", lambda: ran.append("next"))
        return "done"

    async with make_env(wf) as env:
        outcome = await env.execute(wf)
        assert outcome.status is RunStatus.FAILED
        assert (outcome.error or "").startswith("WorkflowTimeout")
        (pay,) = [s for s in await env.history(outcome.run_id) if s.key == "pay"]
        assert pay.status is StepStatus.COMPLETED and pay.result == "paid"
        await env.engine.retry(outcome.run_id)
        done = await env.drive(outcome.run_id)
        assert done.status is RunStatus.COMPLETED
        assert ran == ["pay", "next"]  # the completed step did not run again


async def test_a_retry_while_a_segment_runs_does_not_fence_it_out(make_env) -> None:
    import asyncio

    from kflow import LeaseHeld

    gate, entered = asyncio.Event(), asyncio.Event()

    async def slow() -> str:
        entered.set()
        await gate.wait()
        return "slow"

    @workflow(name="busy-retry", steps=["slow"])
    async def wf(ctx: WorkflowContext) -> str:
        return await ctx.step("slow", slow)

    async with make_env(wf) as env:
        run = await env.engine.start(wf)
        segment = asyncio.create_task(env.engine.run_segment(run.run_id))
        await entered.wait()
        with pytest.raises(LeaseHeld):
            await env.engine.retry(run.run_id)
        gate.set()
        assert (await segment).status is RunStatus.COMPLETED


async def test_retry_replays_a_handler_that_compensated_on_its_own(make_env) -> None:
    shipping = {"down": True}

    def ship() -> str:
        if shipping["down"]:
            raise ConnectionError("carrier down")
        return "shipped"

    @workflow(name="fallback", steps=["hotel", "car", "charge", "ship"])
    async def wf(ctx: WorkflowContext) -> str:
        await ctx.step("hotel", lambda: "h1", compensate=refund)
        try:
            await ctx.step("car", lambda: 1 / 0)
        except Exception:
            await ctx.run_compensation()  # the handler's own saga logic, then it goes on
        await ctx.step("charge", lambda: "ch")
        return await ctx.step("ship", ship)

    async with make_env(wf, refund) as env:
        failed = await env.execute(wf)
        assert failed.status is RunStatus.FAILED and undone == ["h1"]
        shipping["down"] = False
        again = await env.engine.retry(failed.run_id)
        assert again.status is RunStatus.WAITING
        done = await env.drive(failed.run_id)
        assert done.status is RunStatus.COMPLETED and done.output == "shipped"
        assert undone == ["h1"]  # nothing compensated twice


async def test_a_sleep_inside_a_task_group_suspends_the_run(make_env) -> None:
    @workflow(name="grouped-sleep", steps=["after"])
    async def grouped(ctx: WorkflowContext) -> str:
        async with asyncio.TaskGroup() as group:
            group.create_task(ctx.sleep(timedelta(hours=1)))
        return await ctx.step("after", lambda: "woke")

    async with make_env(grouped) as env:
        run = await env.engine.start(grouped)
        first = await env.engine.run_segment(run.run_id)
        assert first.status is RunStatus.WAITING  # not stuck Running
        done = await env.drive(first.run_id)
        assert (done.status, done.output) == (RunStatus.COMPLETED, "woke")


async def test_a_failure_in_a_task_group_fails_the_run(make_env) -> None:
    @workflow(name="grouped-failure", steps=["boom"])
    async def grouped(ctx: WorkflowContext) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(ctx.step("boom", lambda: 1 / 0))
            group.create_task(ctx.sleep(timedelta(hours=1)))

    async with make_env(grouped) as env:
        outcome = await env.execute(grouped)
        assert outcome.status is RunStatus.FAILED and "ZeroDivisionError" in str(outcome.error)


async def test_a_suspension_returned_by_gather_stops_the_handler(make_env) -> None:
    seen: list[object] = []

    @workflow(name="swallowed", steps=["a", "summary"])
    async def swallowed(ctx: WorkflowContext) -> list[object]:
        async def a() -> str:
            await ctx.sleep(timedelta(minutes=5))
            return await ctx.step("a", lambda: "a")

        results = await asyncio.gather(a(), return_exceptions=True)
        seen.append(type(results[0]).__name__)
        return await ctx.step("summary", lambda: list(results))

    async with make_env(swallowed) as env:
        run = await env.engine.start(swallowed)
        first = await env.engine.run_segment(run.run_id)
        assert first.status is RunStatus.WAITING
        history = await env.engine.history(first.run_id)
        assert "summary" not in {s.key for s in history}  # not recorded on a suspension
        done = await env.drive(first.run_id)
        assert (done.status, done.output) == (RunStatus.COMPLETED, ["a"])
        assert seen[-1] == "str" and set(seen[:-1]) == {"Suspended"}


async def test_an_event_wait_with_a_zero_timeout_times_out_at_once(make_env) -> None:
    @workflow(name="no-patience", events=["go"])
    async def impatient(ctx: WorkflowContext) -> str:
        try:
            await ctx.wait_for_event("go", timeout=timedelta(0))
        except EventTimeout:
            return "gave up"
        return "went"

    async with make_env(impatient) as env:
        outcome = await env.execute(impatient)
        assert (outcome.status, outcome.output) == (RunStatus.COMPLETED, "gave up")


class Vote(BaseModel):
    yes: bool


async def test_two_typed_waits_never_consume_a_payload_the_other_checked(make_env) -> None:
    @workflow(name="two-votes", events=["vote"])
    async def votes(ctx: WorkflowContext) -> list[bool]:
        first, second = await asyncio.gather(
            ctx.wait_for_event("vote", type=Vote), ctx.wait_for_event("vote", type=Vote)
        )
        return [first.yes, second.yes]

    async with make_env(votes) as env:
        run = await env.engine.start(votes)
        await env.send_event(run.run_id, "vote", {"yes": True})
        await env.send_event(run.run_id, "vote", {"yes": "maybe"})  # does not fit
        waiting = await env.engine.run_segment(run.run_id)
        assert waiting.status is RunStatus.WAITING  # one vote in, the misfit set aside
        await env.send_event(run.run_id, "vote", {"yes": False})
        done = await env.drive(run.run_id)
        assert (done.status, done.output) == (RunStatus.COMPLETED, [True, False])


async def test_a_refused_call_after_a_suspension_keeps_step_keys_for_the_replay(
    make_env,
) -> None:
    ran: list[str] = []

    @workflow(name="keyed-siblings", steps=["k", "x"])
    async def siblings(ctx: WorkflowContext) -> object:
        async def a() -> None:
            await ctx.sleep(timedelta(hours=1))

        async def b() -> str:
            return await ctx.step("k", lambda: ran.append("k") or "k", key="one")

        async def c() -> str:
            return await ctx.step("x", lambda: ran.append("x") or "x")

        results = await asyncio.gather(a(), b(), c(), return_exceptions=True)
        return [r if isinstance(r, str) else type(r).__name__ for r in results]

    async with make_env(siblings) as env:
        run = await env.engine.start(siblings)
        await env.engine.run_segment(run.run_id)
        # Woken early: the recorded sleep suspends at once, before its siblings' calls.
        early = await env.engine.run_segment(run.run_id)
        assert early.status is RunStatus.WAITING
        done = await env.drive(run.run_id)
        assert done.status is RunStatus.COMPLETED
        assert done.output == ["NoneType", "k", "x"]
        assert sorted(ran) == ["k", "x"]  # each step ran once, whatever the replays


async def test_tasks_started_after_a_swallowed_suspension_record_nothing(make_env) -> None:
    @workflow(name="late-task", steps=["a", "summary"])
    async def late(ctx: WorkflowContext) -> list[object]:
        async def a() -> str:
            await ctx.sleep(timedelta(minutes=5))
            return await ctx.step("a", lambda: "a")

        results = await asyncio.gather(a(), return_exceptions=True)
        (summary,) = await asyncio.gather(ctx.step("summary", lambda: list(results)))
        return summary  # type: ignore[no-any-return]

    async with make_env(late) as env:
        run = await env.engine.start(late)
        first = await env.engine.run_segment(run.run_id)
        assert first.status is RunStatus.WAITING
        assert "summary" not in {s.key for s in await env.engine.history(run.run_id)}
        done = await env.drive(run.run_id)
        assert (done.status, done.output) == (RunStatus.COMPLETED, ["a"])


async def test_a_stray_save_state_says_its_segment_ended_before_judging_the_value(
    make_env,
) -> None:
    stray: list[asyncio.Task[None]] = []

    @workflow(name="stray-state", steps=[])
    async def leaves_a_task(ctx: WorkflowContext) -> str:
        async def later() -> None:
            await asyncio.sleep(0.05)
            await ctx.save_state("k", object())  # not JSON, and the segment is over

        stray.append(asyncio.create_task(later()))
        return "done"

    async with make_env(leaves_a_task) as env:
        done = await env.execute(leaves_a_task)
        assert done.status is RunStatus.COMPLETED
        with pytest.raises(SegmentEnded, match="this segment has ended"):
            await stray[0]
