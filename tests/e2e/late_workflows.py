"""A workflow deployed "later": the operator only loads it after a restart (e2e tests)."""

from __future__ import annotations

from kflow import WorkflowContext, workflow


@workflow(name="arrives-later", steps=["hello"])
async def arrives_later(ctx: WorkflowContext) -> str:
    return await ctx.step("hello", lambda: "finally")
