"""`WorkflowContext`: what a handler sees, and how each call becomes durable.

A handler is replayed from the top on every segment. `ctx.step` returns the recorded
result of a step that completed before, and records a new step *before* returning it;
sleeps and event waits either return (their condition is met) or raise `Suspended`,
which unwinds the handler and ends the segment. Every record goes to the store before
the call returns, through the segment's `Journal`; a store failure poisons it, so the
segment stops instead of continuing on state the database has not seen. The context is
the handler-facing API only: steps, waits and compensations are their own modules.

Step keys: the first call of a step name is keyed by the name, later calls of the same
name in one run by ``name#2``, ``name#3``... in call order; calls from tasks the handler
starts are numbered per task (``name#t<path>-<n>``), so concurrent branches keep their
keys whatever the interleaving (see `kflow._engine.scopes` and docs/concepts.md). Pass ``key=`` for
data-driven loops (``ctx.step("charge", f, key=item.id)``) so that keys do not depend on
iteration order.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload

from kflow._engine.compensations import Compensations
from kflow._engine.journal import Journal, base_name
from kflow._engine.kv import KvHandle, kv_namespace
from kflow._engine.steps import MISSING, Steps
from kflow._engine.waits import Waits
from kflow._env import EnvAccess
from kflow._errors import KflowError, PersistenceError
from kflow._http import HttpClient
from kflow._models import AuthContext, StepKind, StepState, StepStatus, SuspendKind, SuspendReason
from kflow._retry import RetryPolicy
from kflow._serde import decode, encode
from kflow._store import Database

if TYPE_CHECKING:  # httpx costs ~70 ms to import: only code that makes requests pays
    import httpx

__all__ = ["WorkflowContext"]

T = TypeVar("T")
E = TypeVar("E")


class WorkflowContext(EnvAccess):
    """The handle a workflow handler gets: steps, sleeps, events, state, env, http, db."""

    def __init__(self, journal: Journal) -> None:
        services = journal.services
        run = journal.run
        super().__init__(services.env)
        self.run_id: uuid.UUID = run.run_id
        self.workflow_name: str = run.workflow_name
        self.workflow_version: int | None = run.workflow_version
        self.started_at: datetime = journal.started_at
        self.auth: AuthContext = run.auth
        self.is_resumed: bool = run.segments > 1
        self.resumed_from_sleep: bool = run.suspend_kind == SuspendKind.SLEEP
        self._journal = journal
        self._http_timeout: float | None = None
        namespace = kv_namespace(run.workflow_name, run.tenant_id)
        self.kv = KvHandle(services.store, namespace=namespace, clock=services.clock)
        self.compensations = Compensations(journal, self)
        self._waits = Waits(journal)
        self._steps = Steps(journal, self.compensations)

    # -- identity and time ---------------------------------------------------------

    @property
    def tenant_id(self) -> uuid.UUID | None:
        return self._journal.run.tenant_id

    def workflow_time(self) -> datetime:
        """The time of the latest history this execution has reached: the run's start,
        then each recorded step completion, event receipt or sleep end. Identical on
        every replay, so it is safe to branch on; it does not move between records."""
        return self._journal.time

    def elapsed(self) -> timedelta:
        """``workflow_time() - started_at``: deterministic like `workflow_time`."""
        return self._journal.time - self.started_at

    # -- for executors -------------------------------------------------------------

    def take_suspend_reason(self) -> SuspendReason | None:
        """Why the handler stopped, if it suspended; cleared by reading."""
        return self._journal.take_suspend_reason()

    def close(self) -> None:
        """End the segment: later calls from stray tasks raise `SegmentEnded`."""
        self._journal.close()

    @property
    def poisoned(self) -> PersistenceError | None:
        return self._journal.poisoned

    def with_persist_step_start(self, persist: bool = True) -> WorkflowContext:
        """Record each step's start before running it (one more write per step), so that
        a long step shows as running; by default only its outcome is written."""
        self._journal.persist_start = persist
        return self

    # -- steps ---------------------------------------------------------------------

    # Two signatures so type checkers see an async step's result, not its coroutine.
    @overload
    async def step(
        self, name: str, fn: Callable[..., Awaitable[T]], /, *args: Any,
        retry: RetryPolicy | None = None, timeout: timedelta | None = None,
        compensate: Any = None, key: str | None = None, result_type: Any = MISSING,
        **kwargs: Any,
    ) -> T: ...  # fmt: skip

    @overload
    async def step(
        self, name: str, fn: Callable[..., T], /, *args: Any,
        retry: RetryPolicy | None = None, timeout: timedelta | None = None,
        compensate: Any = None, key: str | None = None, result_type: Any = MISSING,
        **kwargs: Any,
    ) -> T: ...  # fmt: skip

    async def step(
        self,
        name: str,
        fn: Callable[..., T | Awaitable[T]],
        /,
        *args: Any,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        compensate: Any = None,
        key: str | None = None,
        result_type: Any = MISSING,
        **kwargs: Any,
    ) -> T:
        """Run ``fn(*args, **kwargs)`` once for this run and return its result.

        A step that completed before returns its recorded result without calling ``fn``.
        ``retry`` (default: one attempt) and ``timeout`` (per attempt) apply to new
        executions; ``compensate`` is a `@compensation` (called with the result), a
        ``compensation.bind(...)`` call, a ``("name", *json_args)`` tuple — all durable —
        or any callable taking the result (in-process only). The result comes back as
        ``result_type``, by default ``fn``'s return annotation, else as JSON.
        """
        result: T = await self._steps.run(
            name, fn, args, kwargs, retry=retry, timeout=timeout, compensate=compensate,
            key=key, result_type=result_type,
        )  # fmt: skip
        return result

    async def record_step_start(self, name: str) -> None:
        """Persist that step ``name`` started; a no-op once it has started or finished."""
        j = self._journal
        j.declared("step", base_name(name))
        if name not in j.records:
            now = j.services.clock.now()
            await j.write(StepState(key=name, name=base_name(name), attempts=1, started_at=now))

    async def record_step_complete(self, name: str, result: Any) -> None:
        await self._record_outcome(
            name, status=StepStatus.COMPLETED, result=encode(result), seq=self._journal.next_seq()
        )

    async def record_step_failure(self, name: str, error: str) -> None:
        await self._record_outcome(name, status=StepStatus.FAILED, error=error)

    async def _record_outcome(self, name: str, **outcome: Any) -> None:
        j = self._journal
        j.declared("step", base_name(name))
        now = j.services.clock.now()
        prior = j.records.get(name) or StepState(key=name, name=base_name(name), started_at=now)
        outcome.setdefault("error", None)
        await j.write(replace(prior, attempts=max(prior.attempts, 1), completed_at=now, **outcome))
        j.reach(now)

    async def record_step_compensated(self, name: str) -> None:
        prior = self._journal.records.get(name)
        if prior is None:
            raise KflowError(f"run {self.run_id}: no step {name!r} to mark compensated")
        await self._journal.write(replace(prior, status=StepStatus.COMPENSATED, error=None))

    def get_step_state(self, name: str) -> StepState | None:
        state = self._journal.records.get(name)
        return replace(state) if state is not None and state.kind == StepKind.STEP else None

    def is_step_started(self, name: str) -> bool:
        return self.get_step_state(name) is not None

    def is_step_completed(self, name: str) -> bool:
        state = self.get_step_state(name)
        return state is not None and state.status.has_result

    def get_step_result(self, name: str, result_type: type[T] | None = None) -> T | None:
        state = self.get_step_state(name)
        if state is None or not state.status.has_result:
            return None
        return decode(state.result, result_type)  # type: ignore[no-any-return]

    def all_step_states(self) -> dict[str, StepState]:
        records = self._journal.records
        return {k: replace(s) for k, s in records.items() if s.kind == StepKind.STEP}

    def completed_steps_reversed(self) -> list[str]:
        """Keys of completed steps, most recently completed first."""
        done = [s for s in self._journal.records.values() if s.kind == StepKind.STEP and s.seq]
        return [s.key for s in sorted(done, key=lambda s: s.seq or 0, reverse=True)]

    # -- compensation (see kflow._engine.compensations) -------------------------------------

    async def register_compensation(self, step: str, handler: Any) -> None:
        """Attach a compensation to completed step ``step`` (same forms as ``compensate=``)."""
        state = self._journal.records.get(step)
        if state is None or state.status != StepStatus.COMPLETED:
            raise KflowError(f"run {self.run_id}: step {step!r} has not completed")
        descriptor = self.compensations.describe(step, handler)
        await self._journal.write(replace(state, compensation=descriptor))
        self.compensations.keep(step, handler, decode(state.result, None))

    def has_compensation(self, step: str) -> bool:
        return self.compensations.handler(step) is not None

    def get_compensation_handler(self, step: str) -> Callable[[], Awaitable[None]] | None:
        return self.compensations.handler(step)

    def compensation_handlers(self) -> dict[str, Callable[[], Awaitable[None]]]:
        return self.compensations.handlers()

    async def run_compensation(self) -> list[tuple[str, bool]]:
        """Compensate completed steps in reverse completion order; ``[(step, ok)]``."""
        return await self.compensations.run()

    # -- sleeps and event waits (kflow._engine.waits) -----------------------------------------

    async def sleep(self, duration: timedelta) -> None:
        """Suspend for ``duration``; the wake time is persisted, the executor resumes the run."""
        await self._waits.sleep(duration)

    async def sleep_until(self, wake_at: datetime) -> None:
        """Suspend until ``wake_at``; returns at once if that has passed."""
        await self._waits.sleep_until(wake_at)

    @overload
    async def wait_for_event(
        self, name: str, *, timeout: timedelta | None = None, type: type[E]
    ) -> E: ...

    @overload
    async def wait_for_event(
        self, name: str, *, timeout: timedelta | None = None, type: None = None
    ) -> Any: ...

    async def wait_for_event(
        self, name: str, *, timeout: timedelta | None = None, type: Any = None
    ) -> Any:
        """The next event ``name`` sent to this run (kept in its inbox if it came early).

        Suspends until it arrives; raises `EventTimeout` after ``timeout``. An event whose
        payload does not parse as ``type`` is set aside with the reason (the run's status
        shows it rejected, naming the field) and the wait goes on."""
        return await self._waits.wait_for_event(name, timeout=timeout, type=type)

    # -- saved state ---------------------------------------------------------------

    async def save_state(self, key: str, value: Any) -> None:
        """Persist ``value`` under ``key`` for this run (before returning)."""
        await self._journal.save_state(key, value)

    def load_state(self, key: str, type: Any = None) -> Any:
        """The value saved under ``key`` (as ``type`` if given), or None."""
        saved = self._journal.saved
        return decode(saved[key], type) if key in saved else None

    def take_saved_state(self) -> dict[str, Any]:
        """A snapshot of all saved state (JSON values)."""
        return dict(self._journal.saved)

    # -- resources -----------------------------------------------------------------

    @property
    def db(self) -> Database:
        """The application database pool the engine was given (``Engine(app_db=...)``)."""
        app_db = self._journal.services.app_db
        if app_db is None:
            raise KflowError("no application database is configured: pass app_db= to Engine")
        return app_db

    @property
    def http(self) -> HttpClient:
        """An HTTP client behind per-host circuit breakers; use it inside steps."""
        services = self._journal.services
        return HttpClient(services.http_client, services.breakers, self._http_timeout)

    @property
    def raw_http(self) -> httpx.AsyncClient:
        """The underlying httpx client, without breakers or the context's timeout."""
        return self._journal.services.http_client

    def set_http_timeout(self, timeout: timedelta | float | None) -> None:
        """Default timeout of ``ctx.http`` requests from this context (None: httpx's)."""
        self._http_timeout = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
