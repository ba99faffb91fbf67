"""Events: an inbox per run, each event consumed once, timeouts, typed payloads."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import BaseModel

from kflow import (
    EventTimeout,
    RunStatus,
    StepStatus,
    UndeclaredNameError,
    WorkflowContext,
    workflow,
)

pytestmark = pytest.mark.integration


class Approval(BaseModel):
    approver: str
    amount: int


@workflow(name="approval", steps=["after"], events=["approved"])
async def approval(ctx: WorkflowContext) -> dict[str, object]:
    decision = await ctx.wait_for_event("approved", timeout=timedelta(days=3), type=Approval)
    return {"by": decision.approver, "amount": decision.amount, "at": ctx.elapsed().days}


async def test_event_after_the_wait_resumes_the_run(make_env) -> None:
    async with make_env(approval) as env:
        waiting = await env.execute(approval)
        assert waiting.status is RunStatus.WAITING and waiting.waiting_event == "approved"
        env.clock.advance(timedelta(days=1))
        sent = await env.send_event(waiting.run_id, "approved", {"approver": "ana", "amount": 5})
        assert sent.stored and sent.wakes_run
        done = await env.drive(waiting.run_id)
        assert done.status is RunStatus.COMPLETED
        assert done.output == {"by": "ana", "amount": 5, "at": 1}
        (event,) = await env.store.list_events(waiting.run_id)
        assert event["consumed_by"] == "@event:approved#1"


async def test_event_before_the_wait_is_kept_in_the_inbox(make_env) -> None:
    async with make_env(approval) as env:
        run = await env.engine.start(approval)
        sent = await env.send_event(run.run_id, "approved", {"approver": "bo", "amount": 1})
        assert sent.stored and not sent.wakes_run
        done = await env.drive(run.run_id)
        assert done.status is RunStatus.COMPLETED and done.output["by"] == "bo"


async def test_each_event_is_consumed_once_in_order(make_env) -> None:
    @workflow(name="two-waits", events=["tick"])
    async def wf(ctx: WorkflowContext) -> list[object]:
        first = await ctx.wait_for_event("tick")
        second = await ctx.wait_for_event("tick")
        return [first, second]

    async with make_env(wf) as env:
        run = await env.engine.start(wf)
        for n in (1, 2, 3):
            await env.send_event(run.run_id, "tick", n)
        done = await env.drive(run.run_id)
        assert done.output == [1, 2]
        events = await env.store.list_events(run.run_id)
        assert [e["consumed_by"] for e in events] == ["@event:tick#1", "@event:tick#2", None]


async def test_dedupe_key_makes_delivery_idempotent(make_env) -> None:
    async with make_env(approval) as env:
        run = await env.engine.start(approval)
        payload = {"approver": "cy", "amount": 2}
        first = await env.send_event(run.run_id, "approved", payload, dedupe_key="rv-17")
        again = await env.send_event(run.run_id, "approved", payload, dedupe_key="rv-17")
        assert first.stored and not first.duplicate
        assert again.duplicate and not again.stored
        assert len(await env.store.list_events(run.run_id)) == 1


async def test_timeout_raises_and_is_recorded(make_env) -> None:
    async with make_env(approval) as env:
        outcome = await env.execute(approval)
        assert outcome.ready_at == env.clock.now() + timedelta(days=3)
        timed_out = await env.drive(outcome.run_id, through_event_timeouts=True)
        assert timed_out.status is RunStatus.FAILED
        assert (timed_out.error or "").startswith("EventTimeout: event 'approved' did not arrive")
        wait = next(s for s in await env.history(outcome.run_id) if s.name == "approved")
        assert wait.status is StepStatus.FAILED
        late = await env.send_event(outcome.run_id, "approved", {"approver": "x", "amount": 1})
        assert not late.stored and late.status is RunStatus.FAILED


async def test_timeout_can_be_handled_and_replays_the_same(make_env) -> None:
    @workflow(name="reminder", steps=["remind"], events=["ack"])
    async def wf(ctx: WorkflowContext) -> str:
        try:
            await ctx.wait_for_event("ack", timeout=timedelta(hours=1))
        except EventTimeout:
            await ctx.step("remind", lambda: "sent")
            await ctx.sleep(timedelta(hours=1))
            return "reminded"
        return "acked"

    async with make_env(wf) as env:
        outcome = await env.execute(wf)
        done = await env.drive(outcome.run_id, through_event_timeouts=True)
        assert done.output == "reminded"


async def test_a_payload_that_does_not_fit_is_set_aside_naming_the_field(make_env) -> None:
    async with make_env(approval) as env:
        run = await env.engine.start(approval)
        await env.send_event(run.run_id, "approved", {"approver": "dee", "amount": "lots"})
        waiting = await env.drive(run.run_id)
        assert waiting.status is RunStatus.WAITING  # the run keeps its state and waits on
        (typo,) = await env.store.list_events(run.run_id)
        assert "amount: Input should be a valid integer" in typo["rejected"]
        await env.send_event(run.run_id, "approved", {"approver": "dee", "amount": 5})
        done = await env.drive(run.run_id)
        assert done.status is RunStatus.COMPLETED


async def test_undeclared_event_is_refused_at_send(make_env) -> None:
    async with make_env(approval) as env:
        run = await env.engine.start(approval)
        await env.engine.run_segment(run.run_id)
        with pytest.raises(UndeclaredNameError, match="'rejected' is not declared"):
            await env.send_event(run.run_id, "rejected", {})
