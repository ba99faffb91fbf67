"""Workflows for the ``kflow runner`` tests (imported by the runner subprocess)."""

from __future__ import annotations

from datetime import timedelta

from kflow import WorkflowContext, workflow


@workflow(name="two-segments", steps=["first", "second"])
async def two_segments(ctx: WorkflowContext, name: str) -> str:
    await ctx.step("first", lambda: 1)
    await ctx.sleep(timedelta(seconds=1))
    await ctx.step("second", lambda: 2)
    return f"hello {name}"
