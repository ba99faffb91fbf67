"""Compensation: reverse order, durable across restarts, closures only in-process."""

from __future__ import annotations

from datetime import timedelta

import pytest

from kflow import Engine, Registry, RunStatus, StepStatus, WorkflowContext, compensation, workflow
from kflow.testing import WorkflowTestEnv

pytestmark = pytest.mark.integration

undone: list[object] = []


@compensation("refund")
async def refund(ctx: WorkflowContext, charge: dict[str, object]) -> None:
    undone.append(("refund", charge["id"]))


@compensation("unbook")
async def unbook(ctx: WorkflowContext, booking_id: str, seats: int) -> None:
    undone.append(("unbook", booking_id, seats))


@workflow(name="trip", steps=["book", "charge", "notify"], events=["go"])
async def trip(ctx: WorkflowContext) -> str:
    await ctx.step("book", lambda: {"id": "b-1"}, compensate=unbook.bind("b-1", 2))
    await ctx.step("charge", lambda: {"id": "c-9"}, compensate=refund)
    await ctx.step("notify", lambda: "sent")  # nothing to undo
    await ctx.wait_for_event("go")
    return "done"


@pytest.fixture(autouse=True)
def _reset() -> None:
    undone.clear()


async def restarted(env: WorkflowTestEnv) -> Engine:
    """A second engine on the same store: what a new operator process would be."""
    return Engine(env.store, Registry(trip, refund, unbook), clock=env.clock)


async def test_cancel_after_restart_runs_durable_compensations_in_reverse(make_env) -> None:
    async with make_env(trip, refund, unbook) as env:
        waiting = await env.execute(trip)
        assert waiting.status is RunStatus.WAITING
        engine = await restarted(env)
        outcome = await engine.cancel(waiting.run_id, "customer asked")
        await engine.close()
        assert outcome.status is RunStatus.COMPENSATED
        assert outcome.error == "cancelled: customer asked"
        assert undone == [("refund", "c-9"), ("unbook", "b-1", 2)]
        states = {s.key: s.status for s in await env.history(waiting.run_id)}
        assert states["book"] is states["charge"] is StepStatus.COMPENSATED
        assert states["notify"] is StepStatus.COMPLETED


async def test_compensation_resumes_after_a_crash_mid_way(make_env) -> None:
    async with make_env(trip, refund, unbook) as env:
        waiting = await env.execute(trip)
        run = await env.run(waiting.run_id)
        # A cancel that got as far as marking the run Compensating, then died.
        leased = await env.store.acquire_lease(
            run.run_id, owner="dead", now=env.clock.now(), ttl=timedelta(seconds=1), steal=True
        )
        await env.store.update_run(
            run.run_id, leased.lease_epoch, now=env.clock.now(), status=RunStatus.COMPENSATING
        )
        charge = next(s for s in await env.history(run.run_id) if s.key == "charge")
        charge.status = StepStatus.COMPENSATED  # it had refunded, then crashed
        await env.store.write_step(run.run_id, leased.lease_epoch, charge)
        env.clock.advance(timedelta(seconds=2))  # the dead executor's lease expires
        outcome = await env.engine.run_segment(run.run_id)
        assert outcome.status is RunStatus.COMPENSATED
        assert undone == [("unbook", "b-1", 2)]  # the refund is not repeated


async def test_closure_compensation_works_in_process_and_is_lost_on_restart(make_env) -> None:
    @workflow(name="closures", steps=["hold"], events=["go"])
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step("hold", lambda: "h-1", compensate=lambda held: undone.append(held))
        await ctx.wait_for_event("go")

    async with make_env(wf) as env:
        first = await env.execute(wf)
        same_process = await env.engine.cancel(first.run_id)
        assert same_process.status is RunStatus.COMPENSATED
        assert undone == ["h-1"]

        second = await env.execute(wf)
        fresh = Engine(env.store, Registry(wf), clock=env.clock)  # a restart
        outcome = await fresh.cancel(second.run_id, "operator")
        await fresh.close()
        assert outcome.status is RunStatus.FAILED
        assert "manual remediation is required" in (outcome.error or "")
        hold = next(s for s in await env.history(second.run_id) if s.key == "hold")
        assert hold.status is StepStatus.COMPENSATION_FAILED
        assert undone == ["h-1"]


async def test_replay_reattaches_closures_after_restart(make_env) -> None:
    @workflow(name="reattach", steps=["hold"], events=["go"])
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step("hold", lambda: "h-2", compensate=lambda held: undone.append(held))
        await ctx.sleep(timedelta(minutes=1))
        await ctx.wait_for_event("go")

    async with make_env(wf) as env:
        run = await env.engine.start(wf)
        await env.engine.run_segment(run.run_id)  # runs "hold", then sleeps
        fresh = Engine(env.store, Registry(wf), clock=env.clock)
        env.clock.advance(timedelta(minutes=1))
        await fresh.run_segment(run.run_id)  # replays past "hold": closure known again
        outcome = await fresh.cancel(run.run_id)
        await fresh.close()
        assert outcome.status is RunStatus.COMPENSATED and undone == ["h-2"]


async def test_handler_runs_its_own_compensation_on_failure(make_env) -> None:
    @workflow(name="saga", steps=["a", "b", "c"])
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step("a", lambda: {"id": "A"}, compensate=refund)
        await ctx.step("b", lambda: "B", compensate=("unbook", "B", 1))
        assert ctx.has_compensation("a") and ctx.has_compensation("b")
        assert ctx.get_compensation_handler("a") is not None
        assert sorted(ctx.compensation_handlers()) == ["a", "b"]
        assert ctx.completed_steps_reversed() == ["b", "a"]
        try:
            await ctx.step("c", lambda: 1 / 0)
        except Exception:
            assert await ctx.run_compensation() == [("b", True), ("a", True)]
            raise

    async with make_env(wf, refund, unbook) as env:
        outcome = await env.execute(wf)
        assert outcome.status is RunStatus.FAILED
        assert undone == [("unbook", "B", 1), ("refund", "A")]


async def test_failing_compensation_is_reported_and_the_rest_still_run(make_env) -> None:
    @compensation("explode")
    async def explode(ctx: WorkflowContext, _: object) -> None:
        raise RuntimeError("refund API down")

    @workflow(name="partial", steps=["a", "b"], events=["go"])
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step("a", lambda: {"id": "A"}, compensate=refund)
        await ctx.step("b", lambda: "B", compensate=explode)
        await ctx.wait_for_event("go")

    async with make_env(wf, refund, explode) as env:
        waiting = await env.execute(wf)
        outcome = await env.engine.cancel(waiting.run_id)
        assert outcome.status is RunStatus.FAILED
        assert "compensation failed for b" in (outcome.error or "")
        assert "RuntimeError: refund API down" in (outcome.error or "")
        assert undone == [("refund", "A")]


async def test_unregistered_named_compensation_fails_before_the_step_runs(make_env) -> None:
    ran: list[object] = []

    @workflow(name="unregistered", steps=["a"])
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step("a", lambda: ran.append(1), compensate=refund)

    async with make_env(wf) as env:  # refund is not in this registry
        outcome = await env.execute(wf)
        assert outcome.status is RunStatus.FAILED
        assert "compensation 'refund' is not in the engine's registry" in (outcome.error or "")
        assert ran == []


async def test_cancel_without_compensations_and_of_finished_runs(make_env) -> None:
    @workflow(name="plain", events=["go"])
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.wait_for_event("go")

    async with make_env(wf) as env:
        waiting = await env.execute(wf)
        outcome = await env.engine.cancel(waiting.run_id, "no longer needed")
        assert outcome.status is RunStatus.CANCELLED_BY_OPERATOR
        again = await env.engine.cancel(waiting.run_id)
        assert again.status is RunStatus.CANCELLED_BY_OPERATOR
        assert again.error == "cancelled: no longer needed"
