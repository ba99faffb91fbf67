"""Workflows of ``bench/pod_overhead.py``: one no-op step each, under two names.

The two are the same handler body, so the only difference between them is where the
operator runs their segments: ``bench-one-pod`` is declared by a `WorkflowDefinition` resource with
``executor: pod`` (a segment Pod runs ``kflow runner``, importing this module), while
``bench-one-inline`` is declared by none and so runs inline, the operator's default.
``bench/workflows.py`` has no 1-step workflow without a wait, hence this module.
"""

from __future__ import annotations

from bench.workflows import Nothing, noop

from kflow import WorkflowContext, workflow


@workflow(name="bench-one-pod", steps=["noop"])
async def one_step_pod(ctx: WorkflowContext, _: Nothing) -> int:
    """One no-op step, in a segment Pod."""
    return await ctx.step("noop", noop, 1)


@workflow(name="bench-one-inline", steps=["noop"])
async def one_step_inline(ctx: WorkflowContext, _: Nothing) -> int:
    """One no-op step, in the operator."""
    return await ctx.step("noop", noop, 1)
