"""Sleeps and event waits of a `WorkflowContext`: persisted wake times and the run's inbox.

A sleep records its wake time and suspends; the replay after the wake time passes it. A
wait consumes the oldest pending event of its name atomically with recording itself as
done (one statement), records a deadline when it has to suspend, and a timeout when the
deadline passes first, so a replay sees the same outcome whatever arrives later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from kflow._engine.journal import Journal
from kflow._errors import EventPayloadError, EventTimeout
from kflow._models import StepKind, StepState, StepStatus, SuspendKind, SuspendReason
from kflow._serde import decode, describe_validation_error

__all__ = ["Waits"]


class Waits:
    """The sleeps and event waits of one segment. The public methods, documented, are
    `WorkflowContext`'s, which delegate here."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    async def sleep(self, duration: timedelta) -> None:
        await self._sleep(lambda now: now + duration if duration > timedelta(0) else None)

    async def sleep_until(self, wake_at: datetime) -> None:
        if wake_at.utcoffset() is None:
            raise TypeError(
                f"sleep_until(wake_at={wake_at!r}): wake_at has no time zone; pass an aware "
                "datetime (datetime.now(UTC) + ..., or .replace(tzinfo=UTC) if it is UTC)"
            )

        def wake(now: datetime) -> datetime | None:
            if wake_at <= now:
                self._journal.reach(wake_at)  # a fixed time: the same on every replay
                return None
            return wake_at

        await self._sleep(wake)

    async def _sleep(self, wake_after: Callable[[datetime], datetime | None]) -> None:
        """Pass a recorded sleep, or record a new one at ``wake_after(now)`` and suspend
        (``None``: nothing to wait for; the call still takes its key)."""
        j = self._journal
        j.guard(new_work=True)
        key = j.next_key("@sleep", first_bare=False)
        state = j.records.get(key)
        if state is not None:
            await self._finish_sleep(state)
            return
        wake_at = wake_after(j.services.clock.now())
        if wake_at is not None:
            await self._start_sleep(key, wake_at)

    async def _start_sleep(self, key: str, wake_at: datetime) -> None:
        j = self._journal
        now = j.services.clock.now()
        await j.write(
            StepState(
                key=key,
                name="sleep",
                kind=StepKind.SLEEP,
                status=StepStatus.WAITING,
                attempts=1,
                started_at=now,
                wake_at=wake_at,
                seq=j.next_seq(),
            )
        )
        raise j.suspending(SuspendReason(SuspendKind.SLEEP, key, wake_at))

    async def _finish_sleep(self, state: StepState) -> None:
        j = self._journal
        assert state.wake_at is not None
        if j.services.clock.now() < state.wake_at:
            raise j.suspending(SuspendReason(SuspendKind.SLEEP, state.key, state.wake_at))
        if state.status == StepStatus.WAITING:  # first pass after waking: show it as done
            await j.write(replace(state, status=StepStatus.COMPLETED, completed_at=state.wake_at))
        j.reach(state.wake_at)

    async def _take(
        self, key: str, name: str, tp: Any, now: datetime, seq: int
    ) -> tuple[bool, Any]:
        """Consume the oldest pending ``name`` event for the wait ``key``. With a type,
        events whose payload does not parse as it are set aside first, oldest first, with
        the reason (shown on the run's status): a typo never fails the run, nor hides
        the events after it. The event consumed is exactly the one checked; one another
        wait took meanwhile is looked for again."""
        j = self._journal
        store, epoch = j.services.store, j.run.lease_epoch
        if tp is None:
            return await store.consume_event(
                j.run_id, epoch, name=name, wait_key=key, now=now, seq=seq
            )
        while (pending := await store.next_event(j.run_id, name)) is not None:
            event_id, payload = pending
            try:
                _parse_event(name, payload, tp)
            except EventPayloadError as exc:
                await store.reject_event(j.run_id, epoch, event_id, wait_key=key,
                                         reason=str(exc), now=now)  # fmt: skip
                continue
            found, payload = await store.consume_event(
                j.run_id, epoch, name=name, wait_key=key, now=now, seq=seq, event_id=event_id,
            )  # fmt: skip
            if found:
                return True, payload
        return False, None

    async def wait_for_event(
        self, name: str, *, timeout: timedelta | None = None, type: Any = None
    ) -> Any:
        j = self._journal
        j.guard(new_work=True)
        j.declared("event", name)
        key = j.next_key(f"@event:{name}", first_bare=False)
        state = j.records.get(key)
        if state is not None and state.status == StepStatus.COMPLETED:
            j.reach(state.completed_at)
            try:
                return _parse_event(name, state.result, type)
            except EventPayloadError as exc:  # it fitted when it was taken: the code changed
                raise j.mismatch(f"wait {key!r}", f"{exc} (it fitted when it was taken)") from exc
        if state is not None and state.status == StepStatus.FAILED:
            j.reach(state.completed_at)
            raise EventTimeout(state.error or f"event {name!r} timed out")
        now = j.services.clock.now()
        seq = j.next_seq()
        found, payload = await j.store_call(self._take(key, name, type, now, seq))
        if found:
            j.recorded(StepState(
                key=key, name=name, kind=StepKind.EVENT, status=StepStatus.COMPLETED,
                attempts=1, result=payload, started_at=now, completed_at=now, seq=seq,
            ))  # fmt: skip
            j.reach(now)
            return _parse_event(name, payload, type)
        deadline = (
            state.wake_at if state is not None else (now + timeout if timeout is not None else None)
        )
        if deadline is not None and now >= deadline:
            message = f"event {name!r} did not arrive by {deadline.isoformat()}"
            base = state or StepState(key=key, name=name, kind=StepKind.EVENT, started_at=now)
            await j.write(replace(base, status=StepStatus.FAILED, error=message, completed_at=now))
            j.reach(now)
            raise EventTimeout(message)
        if state is None:
            await j.write(
                StepState(
                    key=key, name=name, kind=StepKind.EVENT, status=StepStatus.WAITING,
                    attempts=1, started_at=now, wake_at=deadline, seq=seq,
                )
            )  # fmt: skip
        raise j.suspending(SuspendReason(SuspendKind.EVENT, key, deadline, event=name))


def _parse_event(name: str, payload: Any, tp: Any) -> Any:
    try:
        return decode(payload, tp)
    except ValidationError as exc:
        raise EventPayloadError(
            f"event {name!r}: payload does not match {getattr(tp, '__name__', tp)}: "
            f"{describe_validation_error(exc)}"
        ) from exc
