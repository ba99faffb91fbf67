"""Workflows the operator e2e tests run (loaded by the operator via KFLOW_WORKFLOW_MODULES).

Step functions append a line to a file named in the input, so a test can count how often
each really ran, across operator crashes.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel

from kflow import WorkflowContext, compensation, workflow


class Job(BaseModel):
    log: str
    delay: float = 0.0
    sleep_seconds: float = 0.0
    steps: int = 3
    flag: str | None = None


async def mark(log: str, what: str, delay: float = 0.0) -> str:
    if delay:
        await asyncio.sleep(delay)
    await asyncio.to_thread(_append, Path(log), what)
    return what


def _append(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(line + "\n")


@workflow(name="steps", steps=["work"])
async def steps(ctx: WorkflowContext, job: Job) -> list[str]:
    done = []
    for i in range(job.steps):
        done.append(await ctx.step("work", mark, job.log, f"work-{i}", job.delay))
    return done


@workflow(name="sleeper", steps=["before", "after"])
async def sleeper(ctx: WorkflowContext, job: Job) -> str:
    await ctx.step("before", mark, job.log, "before")
    await ctx.sleep(timedelta(seconds=job.sleep_seconds))
    await ctx.step("after", mark, job.log, "after")
    return "rested"


class Approval(BaseModel):
    by: str


@workflow(name="approval", steps=["record"], events=["approved"])
async def approval(ctx: WorkflowContext, job: Job) -> str:
    decision = await ctx.wait_for_event("approved", timeout=timedelta(hours=1), type=Approval)
    await ctx.step("record", mark, job.log, f"approved-by-{decision.by}")
    return decision.by


@workflow(name="approval-twice", steps=["record"], events=["approved"])
async def approval_twice(ctx: WorkflowContext, job: Job) -> list[str]:
    first = await ctx.wait_for_event("approved", type=Approval)
    await ctx.step("record", mark, job.log, f"first-{first.by}")
    second = await ctx.wait_for_event("approved", type=Approval)
    return [first.by, second.by]


@compensation("unmark")
async def unmark(ctx: WorkflowContext, log: str, what: str) -> None:
    await mark(log, f"undo-{what}")


@workflow(name="saga", steps=["reserve", "charge"], events=["go"])
async def saga(ctx: WorkflowContext, job: Job) -> str:
    await ctx.step("reserve", mark, job.log, "reserve", compensate=unmark.bind(job.log, "reserve"))
    await ctx.step("charge", mark, job.log, "charge", compensate=unmark.bind(job.log, "charge"))
    await ctx.wait_for_event("go")
    return "went"


def check_flag(job: Job) -> str:
    if job.flag is None or not Path(job.flag).exists():
        raise RuntimeError("flag is not there yet")
    return "flag found"


@workflow(name="flaky", steps=["first", "check"])
async def flaky(ctx: WorkflowContext, job: Job) -> str:
    await ctx.step("first", mark, job.log, "first")
    return await ctx.step("check", check_flag, job)


@workflow(name="journey", steps=["start", "finish"], events=["go"])
async def journey(ctx: WorkflowContext, job: Job) -> str:
    """Three segments: to the sleep, to the event wait, to the end."""
    await ctx.step("start", mark, job.log, "start")
    await ctx.sleep(timedelta(seconds=job.sleep_seconds))
    await ctx.wait_for_event("go")
    await ctx.step("finish", mark, job.log, "finish")
    return "arrived"


@workflow(name="slow-saga", steps=["reserve", "slow"])
async def slow_saga(ctx: WorkflowContext, job: Job) -> str:
    await ctx.step("reserve", mark, job.log, "reserve", compensate=unmark.bind(job.log, "reserve"))
    await ctx.step("slow", mark, job.log, "slow", job.delay)
    return "done"


class Note(BaseModel):
    key: str
    value: str | None = None


@workflow(name="notes")
async def notes(ctx: WorkflowContext, note: Note) -> str | None:
    """Sets ``key`` (when a value is given), then reads it back: ``ctx.kv`` as a run sees it."""
    if note.value is not None:
        await ctx.kv.set(note.key, note.value)
    found: str | None = await ctx.kv.get(note.key)
    return found
