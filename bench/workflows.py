"""Workflows of ``bench/operator_throughput.py``, loaded by the operator it starts
(``KFLOW_WORKFLOW_MODULES='["bench.workflows"]'``, ``PYTHONPATH`` at the repository root).

Steps do no work, so what is measured is the operator's own path: watch, PostgreSQL,
status PATCHes.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from kflow import WorkflowContext, workflow


def noop(i: int) -> int:
    return i


class Nothing(BaseModel):
    pass


class Wake(BaseModel):
    at: datetime


@workflow(name="bench-three", steps=["noop"])
async def three_steps(ctx: WorkflowContext, _: Nothing) -> int:
    """Three no-op steps: the throughput scenario."""
    total = 0
    for i in range(3):
        total += await ctx.step("noop", noop, i)
    return total


@workflow(name="bench-event", steps=["noop"], events=["go"])
async def on_event(ctx: WorkflowContext, _: Nothing) -> int:
    """Waits for event ``go``, then one step: the event-latency scenario."""
    await ctx.wait_for_event("go")
    return await ctx.step("noop", noop, 1)


@workflow(name="bench-sleep", steps=["noop"])
async def sleeper(ctx: WorkflowContext, wake: Wake) -> int:
    """Sleeps until ``at`` (a durable timer), then one step: the timer scenario."""
    await ctx.sleep_until(wake.at)
    return await ctx.step("noop", noop, 1)
