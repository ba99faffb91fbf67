"""Steps of a `WorkflowContext`: run once, recorded before they return, retried by policy.

A step that completed before returns its recorded result (decoded to the step's type);
one that failed for good raises the same `StepFailed` again. A new one runs attempt by
attempt: each outcome is written before the handler sees it, and the handler gets the
result decoded from its JSON form, as a replay does, so both see the same value; a
synchronous step function runs in a thread, off the event loop; a backoff up to
``max_inline_backoff`` is waited in the segment, a longer one suspends the run (a retry
wait, persisted like a sleep); a step running longer than ``record_running_after`` is
recorded as running, so the operator can show it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any, TypeVar

from pydantic import ValidationError

from kflow._engine.compensations import Compensations
from kflow._engine.journal import Journal
from kflow._errors import NonRetryable, StepFailed, StepTimeout
from kflow._models import StepState, StepStatus, SuspendKind, SuspendReason
from kflow._retry import NO_RETRY, RetryPolicy
from kflow._serde import decode, describe_validation_error, encode, type_name
from kflow._workflow import return_type

__all__ = ["MISSING", "Steps"]

T = TypeVar("T")
MISSING: Any = object()
"""``result_type`` not given: the step function's return annotation decides."""


class _ResultNotJSON(NonRetryable, TypeError):
    """A step returned something JSON cannot hold: retrying would not help."""


class ResultTypeError(NonRetryable, TypeError):
    """A step's result does not fit the type it declares (its return annotation or
    ``result_type=``): retrying would not help."""


class Steps:
    """The step runner of one segment. The public method, documented, is
    `WorkflowContext.step`, which delegates here."""

    def __init__(self, journal: Journal, compensations: Compensations) -> None:
        self._journal = journal
        self._compensations = compensations

    async def run(
        self,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        retry: RetryPolicy | None,
        timeout: timedelta | None,
        compensate: Any,
        key: str | None,
        result_type: Any,
    ) -> Any:
        j = self._journal
        j.guard(new_work=True)
        j.declared("step", name)
        skey = f"{name}[{key}]" if key is not None else j.next_key(name)
        rtype = return_type(fn) if result_type is MISSING else result_type
        found = j.records.get(skey)
        if found is not None and found.status.has_result:
            j.reach(found.completed_at)
            try:
                result = decode(found.result, rtype)
            except ValidationError as exc:
                raise j.mismatch(
                    f"step {skey!r}",
                    f"its recorded result no longer fits its declared type {type_name(rtype)} "
                    f"({describe_validation_error(exc)})",
                ) from exc
            self._compensations.keep(skey, compensate, result)
            return result
        if found is not None and found.status == StepStatus.FAILED:
            j.reach(found.completed_at)
            raise _replayed_failure(skey, found.error)
        descriptor = self._compensations.describe(skey, compensate)
        policy = retry or NO_RETRY
        # One private copy, updated in place: records are written from it, and
        # the journal only takes it once the store has it.
        state = (
            replace(found)
            if found is not None
            else StepState(key=skey, name=name, started_at=j.services.clock.now())
        )
        if state.status == StepStatus.RETRYING and state.wake_at is not None:
            await self._wait_for_retry(state)
        while True:
            state.attempts += 1
            state.status = StepStatus.RUNNING
            try:
                result, encoded = await self._attempt(
                    state, _invoke(fn, args, kwargs, timeout, rtype)
                )
            except Exception as exc:
                now = j.services.clock.now()
                state.error = f"{type(exc).__name__}: {exc}"
                if policy.should_retry(exc, state.attempts):
                    state.status = StepStatus.RETRYING
                    state.wake_at = now + policy.backoff(state.attempts)
                    await j.write(replace(state))
                    await self._wait_for_retry(state)
                    continue
                state.status, state.completed_at = StepStatus.FAILED, now
                await j.write(state)
                j.reach(now)
                raise StepFailed(skey, type(exc).__name__, str(exc)) from exc
            now = j.services.clock.now()
            state.status, state.result, state.error, state.wake_at = (
                StepStatus.COMPLETED, encoded, None, None,
            )  # fmt: skip
            state.completed_at, state.compensation, state.seq = now, descriptor, j.next_seq()
            await j.write(state)
            j.reach(now)
            self._compensations.keep(skey, compensate, result)
            return result

    async def _attempt(self, state: StepState, call: Awaitable[T]) -> T:
        """Await one attempt, recording it as running first (`with_persist_step_start`)
        or once it outlives `record_running_after`."""
        j = self._journal
        if j.persist_start:
            await j.write(replace(state))
            return await call
        delay = j.services.record_running_after
        if delay is None:
            return await call
        announced: list[asyncio.Task[None]] = []
        timer = asyncio.get_running_loop().call_later(
            delay.total_seconds(),
            lambda: announced.append(asyncio.create_task(j.write(replace(state)))),
        )
        try:
            return await call
        finally:
            timer.cancel()
            if announced:  # the running record must land before the outcome's
                await announced[0]

    async def _wait_for_retry(self, state: StepState) -> None:
        j = self._journal
        assert state.wake_at is not None
        delay = state.wake_at - j.services.clock.now()
        if delay > j.services.max_inline_backoff:
            raise j.suspending(SuspendReason(SuspendKind.RETRY, state.key, state.wake_at))
        await j.services.clock.sleep(delay.total_seconds())
        j.guard(new_work=True)


def _replayed_failure(key: str, error: str | None) -> StepFailed:
    error_type, _, message = (error or "Error: unknown").partition(": ")
    return StepFailed(key, error_type, message)


async def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _is_async(fn):
        return await fn(*args, **kwargs)
    # A blocking function must not stall the loop (lease renewal, other runs); the
    # attempt's timeout stops waiting for it, but a thread cannot be stopped.
    value = await asyncio.to_thread(fn, *args, **kwargs)
    return await value if inspect.isawaitable(value) else value  # lambda: some_coroutine()


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004  (an object with an async __call__)
    )


async def _invoke(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: timedelta | None,
    rtype: Any,
) -> tuple[Any, Any]:
    """Call the step function (sync or async) under the attempt timeout; return the value
    the handler gets and its JSON form."""
    if timeout is None:
        result = await _call(fn, args, kwargs)
    else:
        limit = asyncio.timeout(timeout.total_seconds())
        try:
            async with limit:
                result = await _call(fn, args, kwargs)
        except TimeoutError as exc:
            if limit.expired():
                raise StepTimeout(f"attempt exceeded its timeout of {timeout}") from exc
            raise
    try:
        encoded = encode(result)
    except TypeError as exc:
        raise _ResultNotJSON(str(exc)) from exc
    try:  # what a replay will return, so the first run sees the same value
        return decode(encoded, rtype), encoded
    except ValidationError as exc:
        raise ResultTypeError(
            f"its result does not fit its declared type {type_name(rtype)}: "
            f"{describe_validation_error(exc)}"
        ) from exc
