"""Steps: recorded once, replayed from the store, retried, timed out, typed."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from pydantic import BaseModel

from kflow import (
    NonRetryable,
    RetryPolicy,
    RunStatus,
    StepFailed,
    StepStatus,
    UndeclaredNameError,
    WorkflowContext,
    workflow,
)

pytestmark = pytest.mark.integration


class Point(BaseModel):
    x: int
    y: int


def counted(calls: dict[str, int], name: str, value: object = None):  # type: ignore[no-untyped-def]
    def fn(*_: object) -> object:
        calls[name] = calls.get(name, 0) + 1
        return value if value is not None else name

    return fn


async def test_steps_run_once_and_replay_from_the_store(make_env, counter) -> None:
    @workflow(name="three-steps", steps=["a", "b", "c"])
    async def wf(ctx: WorkflowContext) -> list[object]:
        a = await ctx.step("a", counted(counter, "a", 1))
        await ctx.sleep(timedelta(hours=1))
        b = await ctx.step("b", counted(counter, "b", {"k": [1, 2]}))
        await ctx.sleep(timedelta(hours=1))
        c = await ctx.step("c", counted(counter, "c", "three"))
        return [a, b, c]

    async with make_env(wf) as env:
        outcome = await env.execute(wf)
        assert outcome.status is RunStatus.COMPLETED
        assert outcome.output == [1, {"k": [1, 2]}, "three"]
        assert counter == {"a": 1, "b": 1, "c": 1}
        run = await env.run(outcome.run_id)
        assert run.segments == 3
        history = await env.history(outcome.run_id)
        assert [s.key for s in history] == ["a", "@sleep#1", "b", "@sleep#2", "c"]
        assert all(s.status is StepStatus.COMPLETED for s in history)


async def test_typed_results_are_the_same_on_replay(make_env) -> None:
    seen: list[object] = []

    def make_point() -> Point:
        return Point(x=1, y=2)

    @workflow(name="typed", steps=["p"])
    async def wf(ctx: WorkflowContext) -> int:
        p = await ctx.step("p", make_point)
        seen.append(p)
        await ctx.sleep(timedelta(seconds=5))
        return p.x + p.y

    async with make_env(wf) as env:
        outcome = await env.execute(wf)
        assert outcome.output == 3
        assert seen == [Point(x=1, y=2), Point(x=1, y=2)]  # live, then replayed


async def test_loop_occurrences_and_explicit_keys(make_env, counter) -> None:
    @workflow(name="loops", steps=["item", "charge"])
    async def wf(ctx: WorkflowContext) -> list[object]:
        out = [await ctx.step("item", lambda i=i: i * 10) for i in range(3)]
        for sku in ("x", "y"):
            out.append(await ctx.step("charge", counted(counter, sku), key=sku))
        await ctx.sleep(timedelta(minutes=1))
        return out

    async with make_env(wf) as env:
        outcome = await env.execute(wf)
        assert outcome.output == [0, 10, 20, "x", "y"]
        keys = {s.key for s in await env.history(outcome.run_id)}
        assert {"item", "item#2", "item#3", "charge[x]", "charge[y]"} <= keys
        assert counter == {"x": 1, "y": 1}


async def test_concurrent_steps_replay_deterministically(make_env, counter) -> None:
    async def slow(name: str, delay: float) -> str:
        counter[name] = counter.get(name, 0) + 1
        await asyncio.sleep(delay)
        return name

    @workflow(name="fan-out", steps=["work"])
    async def wf(ctx: WorkflowContext) -> list[str]:
        delays = [0.05, 0.01, 0.03, 0.0, 0.02]
        results = await asyncio.gather(
            *(ctx.step("work", slow, f"w{i}", d) for i, d in enumerate(delays))
        )
        await ctx.sleep(timedelta(days=1))
        return list(results)

    async with make_env(wf) as env:
        outcome = await env.execute(wf)
        assert outcome.output == ["w0", "w1", "w2", "w3", "w4"]
        assert counter == {f"w{i}": 1 for i in range(5)}
        steps = {s.key: s.result for s in await env.history(outcome.run_id) if s.name == "work"}
        assert steps == {f"work#t{i + 1}-1": f"w{i}" for i in range(5)}  # keyed per task


async def test_concurrent_branches_of_several_steps_keep_their_results(make_env) -> None:
    async def fetch(label: str, delay: float) -> str:
        await asyncio.sleep(delay)
        return f"fetched-{label}"

    @workflow(name="branches", steps=["fetch", "process"])
    async def wf(ctx: WorkflowContext) -> list[str]:
        async def branch(label: str, delay: float) -> str:
            got = await ctx.step("fetch", fetch, label, delay)
            return await ctx.step("process", lambda: f"{got}-processed")

        # B's fetch finishes first; on replay A's branch runs to its end before B starts.
        results = await asyncio.gather(branch("A", 0.1), branch("B", 0.0))
        await ctx.sleep(timedelta(minutes=1))
        return list(results)

    async with make_env(wf) as env:
        outcome = await env.execute(wf)
        assert outcome.output == ["fetched-A-processed", "fetched-B-processed"]


async def test_retry_with_backoff_then_success(make_env) -> None:
    attempts: list[object] = []

    def flaky() -> str:
        attempts.append(None)
        if len(attempts) < 3:
            raise ConnectionError("upstream down")
        return "ok"

    policy = RetryPolicy(max_attempts=5, initial_interval=timedelta(seconds=2))

    @workflow(name="flaky", steps=["call"])
    async def wf(ctx: WorkflowContext) -> str:
        return await ctx.step("call", flaky, retry=policy)

    async with make_env(wf) as env:
        start = env.clock.now()
        outcome = await env.execute(wf)
        assert outcome.status is RunStatus.COMPLETED and outcome.output == "ok"
        assert len(attempts) == 3
        assert env.clock.now() - start == timedelta(seconds=2 + 4)  # two backoffs, virtual
        (step,) = await env.history(outcome.run_id)
        assert step.attempts == 3 and step.status is StepStatus.COMPLETED


async def test_long_backoff_suspends_durably(make_env) -> None:
    calls: list[object] = []

    def failing_once() -> str:
        calls.append(None)
        if len(calls) == 1:
            raise ConnectionError("503")
        return "done"

    policy = RetryPolicy(
        max_attempts=2, initial_interval=timedelta(hours=1), max_interval=timedelta(hours=1)
    )

    @workflow(name="patient", steps=["call"])
    async def wf(ctx: WorkflowContext) -> str:
        return await ctx.step("call", failing_once, retry=policy)

    async with make_env(wf) as env:
        run = await env.engine.start(wf)
        first = await env.engine.run_segment(run.run_id)
        assert first.status is RunStatus.WAITING
        assert first.ready_at == env.clock.now() + timedelta(hours=1)
        (step,) = await env.history(run.run_id)
        assert step.status is StepStatus.RETRYING and step.attempts == 1
        assert "ConnectionError: 503" in (step.error or "")
        done = await env.drive(run.run_id)
        assert done.output == "done" and len(calls) == 2


async def test_non_retryable_and_exhausted_retries_fail_the_step(make_env) -> None:
    calls: list[str] = []

    class Declined(NonRetryable):
        pass

    def declined() -> None:
        calls.append("declined")
        raise Declined("card declined")

    def broken() -> None:
        calls.append("broken")
        raise ValueError("bad")

    policy = RetryPolicy(max_attempts=3, initial_interval=timedelta(seconds=1))

    @workflow(name="failing", steps=["charge", "other"])
    async def wf(ctx: WorkflowContext) -> str:
        try:
            await ctx.step("charge", declined, retry=policy)
        except StepFailed as exc:
            assert exc.error_type == "Declined"  # noqa: PT017 - the handler's own check
        await ctx.sleep(timedelta(hours=1))  # the replay after it re-raises, calls nothing
        await ctx.step("other", broken, retry=policy)
        return "unreachable"

    async with make_env(wf) as env:
        outcome = await env.execute(wf)
        assert outcome.status is RunStatus.FAILED
        assert outcome.error == "StepFailed: step 'other' failed: ValueError: bad"
        assert calls == ["declined", "broken", "broken", "broken"]


async def test_step_timeout_counts_as_a_failed_attempt(make_env) -> None:
    async def hang() -> None:
        await asyncio.sleep(30)

    @workflow(name="slow", steps=["hang"])
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step(
            "hang",
            hang,
            timeout=timedelta(milliseconds=50),
            retry=RetryPolicy(max_attempts=2, initial_interval=timedelta(0)),
        )

    async with make_env(wf) as env:
        outcome = await env.execute(wf)
        assert outcome.status is RunStatus.FAILED
        assert "StepTimeout" in (outcome.error or "")
        (step,) = await env.history(outcome.run_id)
        assert step.attempts == 2 and step.status is StepStatus.FAILED


async def test_undeclared_step_names_the_step(make_env) -> None:
    @workflow(name="strict", steps=["known"])
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step("unknown", lambda: 1)

    async with make_env(wf) as env:
        outcome = await env.execute(wf)
        assert outcome.status is RunStatus.FAILED
        assert "UndeclaredNameError: step 'unknown' is not declared" in (outcome.error or "")
        assert UndeclaredNameError.__name__ in (outcome.error or "")


async def test_unserialisable_result_fails_without_retry(make_env) -> None:
    calls: list[object] = []

    def returns_object() -> object:
        calls.append(None)
        return object()

    @workflow(name="opaque", steps=["s"])
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.step("s", returns_object, retry=RetryPolicy(max_attempts=3))

    async with make_env(wf) as env:
        outcome = await env.execute(wf)
        assert outcome.status is RunStatus.FAILED
        assert "cannot be stored as JSON" in (outcome.error or "")
        assert len(calls) == 1


async def test_persist_step_start_shows_a_running_step(make_env) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def long_step() -> str:
        started.set()
        await release.wait()
        return "done"

    @workflow(name="observed", steps=["long"])
    async def wf(ctx: WorkflowContext) -> str:
        return await ctx.step("long", long_step)

    async with make_env(wf, persist_step_start=True) as env:
        run = await env.engine.start(wf)
        task = asyncio.create_task(env.engine.run_segment(run.run_id))
        await started.wait()
        (step,) = await env.history(run.run_id)
        assert step.status is StepStatus.RUNNING and step.attempts == 1
        assert (await env.run(run.run_id)).status is RunStatus.RUNNING
        release.set()
        assert (await task).status is RunStatus.COMPLETED


async def test_low_level_records(make_env) -> None:
    @workflow(name="manual", steps=["m"])
    async def wf(ctx: WorkflowContext) -> dict[str, object]:
        if not ctx.is_step_started("m"):
            await ctx.record_step_start("m")
            await ctx.record_step_start("m")  # a no-op once started
        assert ctx.is_step_started("m")
        if not ctx.is_step_completed("m"):
            await ctx.record_step_complete("m", {"v": 7})
        await ctx.sleep(timedelta(seconds=1))
        state = ctx.get_step_state("m")
        assert state is not None
        return {
            "result": ctx.get_step_result("m"),
            "all": sorted(ctx.all_step_states()),
            "reversed": ctx.completed_steps_reversed(),
            "attempts": state.attempts,
        }

    async with make_env(wf) as env:
        outcome = await env.execute(wf)
        assert outcome.output == {
            "result": {"v": 7},
            "all": ["m"],
            "reversed": ["m"],
            "attempts": 1,
        }


async def test_slow_steps_are_recorded_as_running_fast_ones_are_not(make_env) -> None:
    records: list[tuple[str, StepStatus]] = []

    async def slow() -> str:
        await asyncio.sleep(0.3)
        return "slow"

    @workflow(name="announced", steps=["fast", "slow"])
    async def wf(ctx: WorkflowContext) -> list[str]:
        return [await ctx.step("fast", lambda: "fast"), await ctx.step("slow", slow)]

    async with make_env(
        wf,
        record_running_after=timedelta(milliseconds=50),
        on_record=lambda run_id, step: records.append((step.key, step.status)),
    ) as env:
        outcome = await env.execute(wf)
        assert outcome.output == ["fast", "slow"]
        assert records == [
            ("fast", StepStatus.COMPLETED),
            ("slow", StepStatus.RUNNING),
            ("slow", StepStatus.COMPLETED),
        ]


async def test_nested_concurrency_keeps_every_result_in_place(make_env) -> None:
    ran: list[str] = []

    def make(label: str):  # type: ignore[no-untyped-def]
        async def run() -> str:
            ran.append(label)
            await asyncio.sleep(0.01)
            return label

        return run

    @workflow(name="nested", steps=["a1", "a2", "b1", "x"])
    async def wf(ctx: WorkflowContext) -> list[object]:
        async def leaf(label: str) -> str:
            return await ctx.step("x", make(label))

        async def a() -> list[str]:
            await ctx.step("a1", make("a1"))
            await ctx.step("a2", make("a2"))
            return list(await asyncio.gather(leaf("C1"), leaf("C2")))

        async def b() -> list[str]:
            await ctx.step("b1", make("b1"))
            async with asyncio.TaskGroup() as group:
                d1 = group.create_task(leaf("D1"))
                d2 = group.create_task(leaf("D2"))
            return [d1.result(), d2.result()]

        result = await asyncio.gather(a(), b())
        await ctx.sleep(timedelta(minutes=1))  # the replay after it runs branches in turn
        return list(result)

    async with make_env(wf) as env:
        outcome = await env.execute(wf)
        assert outcome.output == [["C1", "C2"], ["D1", "D2"]]
        assert sorted(ran) == ["C1", "C2", "D1", "D2", "a1", "a2", "b1"]  # each once
