"""`WorkflowContext`: what a handler sees, and how each call becomes durable.

A handler is replayed from the top on every segment. `ctx.step` returns the recorded
result of a step that completed before, and records a new step *before* returning it;
sleeps and event waits either return (their condition is met) or raise `Suspended`,
which unwinds the handler and ends the segment. Every record goes to the store before
the call returns; a store failure poisons the context, so the segment stops instead of
continuing on state the database has not seen.

Step keys: the first call of a step name is keyed by the name, later calls of the same
name in one run by ``name#2``, ``name#3``... in call order; calls from tasks the handler
starts are numbered per task (``name#t<path>-<n>``), so concurrent branches keep their
keys whatever the interleaving (see `kflow.engine.scopes` and docs/concepts.md). Pass ``key=`` for
data-driven loops (``ctx.step("charge", f, key=item.id)``) so that keys do not depend on
iteration order.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload

from kflow.clock import Clock
from kflow.engine.compensations import Closures, Compensations
from kflow.engine.kv import KvHandle
from kflow.engine.scopes import Scopes
from kflow.engine.steps import MISSING, Steps
from kflow.engine.waits import Waits
from kflow.env import EnvAccess, EnvProvider
from kflow.errors import KflowError, PersistenceError, UndeclaredNameError, WorkflowTimeout
from kflow.http import CircuitBreakers, HttpClient
from kflow.models import (
    AuthContext,
    RunRecord,
    StepKind,
    StepState,
    StepStatus,
    SuspendKind,
    SuspendReason,
)
from kflow.retry import RetryPolicy
from kflow.serde import decode, encode
from kflow.store import Database, Store
from kflow.workflow import Registry, WorkflowDefinition

if TYPE_CHECKING:  # httpx costs ~70 ms to import: only code that makes requests pays
    import httpx

__all__ = ["SegmentEnded", "Services", "Suspended", "WorkflowContext"]

T = TypeVar("T")
E = TypeVar("E")
_DONE = frozenset({StepStatus.COMPLETED, StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED})


class Suspended(BaseException):
    """Unwinds a handler at a sleep or event wait. Not an `Exception`, so user code's
    ``except Exception`` cannot swallow it; do not catch `BaseException` in handlers."""

    def __init__(self, reason: SuspendReason) -> None:
        super().__init__(reason)
        self.reason = reason


class SegmentEnded(BaseException):
    """Raised in tasks a handler left running after its segment ended."""


@dataclass
class Services:
    """What the engine lends every context: one instance per engine."""

    store: Store
    registry: Registry
    clock: Clock
    env: EnvProvider
    breakers: CircuitBreakers
    given_http_client: httpx.AsyncClient | None = None
    closures: Closures = field(default_factory=dict)
    app_db: Database | None = None
    persist_step_start: bool = False
    record_running_after: timedelta | None = None
    """Record a step as running once it has run this long (live status for slow steps,
    no extra write for fast ones); `persist_step_start` records every start up front."""
    max_inline_backoff: timedelta = timedelta(seconds=30)
    listeners: list[Callable[[uuid.UUID, StepState], None]] = field(default_factory=list)
    """Told of every record a segment writes (the operator mirrors them into status)."""
    _own_http: httpx.AsyncClient | None = None

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The given client, else one made at first use (most workflows never need one,
        and a runner Pod should not pay for it)."""
        if self.given_http_client is not None:
            return self.given_http_client
        if self._own_http is None:
            import httpx

            self._own_http = httpx.AsyncClient()
        return self._own_http

    async def close(self) -> None:
        if self._own_http is not None:
            await self._own_http.aclose()
            self._own_http = None


class WorkflowContext(EnvAccess):
    """The handle a workflow handler gets: steps, sleeps, events, state, env, http, db."""

    def __init__(
        self,
        *,
        run: RunRecord,
        definition: WorkflowDefinition | None,
        history: list[StepState],
        saved_state: dict[str, Any],
        services: Services,
    ) -> None:
        super().__init__(services.env)
        self.run_id: uuid.UUID = run.run_id
        self.workflow_name: str = run.workflow_name
        self.workflow_version: int | None = run.workflow_version
        self.started_at: datetime = run.started_at or services.clock.now()
        self.auth: AuthContext = run.auth
        self.is_resumed: bool = run.segments > 1
        self.resumed_from_sleep: bool = run.suspend_kind == SuspendKind.SLEEP
        self._tenant_id = run.tenant_id
        self._deadline = run.deadline
        self._definition = definition
        self._svc = services
        self._epoch = run.lease_epoch
        self._steps = {s.key: s for s in history}
        self._state = dict(saved_state)
        self._seq = max((s.seq or 0 for s in history), default=0)
        self._scopes = Scopes()
        self._time = self.started_at
        self._suspend: SuspendReason | None = None
        self._poison: PersistenceError | None = None
        self._closed = False
        self._persist_start = services.persist_step_start
        self._http_timeout: float | None = None
        self.kv = KvHandle(services.store, namespace=run.workflow_name, clock=services.clock)
        self._waits = Waits(self)
        self._step_runner = Steps(self)
        self.compensations = Compensations(
            run_id=run.run_id,
            steps=self._steps,
            write=self._write,
            ctx=self,
            registry=services.registry,
            closures=services.closures,
        )

    # -- identity and time ---------------------------------------------------------

    @property
    def tenant_id(self) -> uuid.UUID | None:
        return self._tenant_id

    def workflow_time(self) -> datetime:
        """The time of the latest history this execution has reached: the run's start,
        then each recorded step completion, event receipt or sleep end. Identical on
        every replay, so it is safe to branch on; it does not move between records."""
        return self._time

    def elapsed(self) -> timedelta:
        """``workflow_time() - started_at``: deterministic like `workflow_time`."""
        return self._time - self.started_at

    def _reach(self, when: datetime | None) -> None:
        if when is not None and when > self._time:
            self._time = when

    # -- plumbing ------------------------------------------------------------------

    def _guard(self, *, new_work: bool = False) -> None:
        """Refuse calls after the segment ended or the store failed; refuse *new* work
        (not the recording of work already done, nor compensation) past the deadline."""
        if self._closed:
            raise SegmentEnded(f"run {self.run_id}: this segment has ended")
        if self._poison is not None:
            raise self._poison
        past = self._deadline is not None and self._svc.clock.now() >= self._deadline
        if new_work and past:
            raise WorkflowTimeout(f"run {self.run_id} passed its deadline {self._deadline}")
        if new_work and self._suspend is not None and self._scopes.suspended():
            # A suspension came back as a value (gather(..., return_exceptions=True)):
            # the handler must not go on, on results this segment does not have.
            raise Suspended(self._suspend)

    async def _write(self, step: StepState) -> None:
        self._guard()
        try:
            await self._svc.store.write_step(self.run_id, self._epoch, step)
        except PersistenceError as exc:
            self._poison = exc
            raise
        self._recorded(step)

    def _recorded(self, step: StepState) -> None:
        self._steps[step.key] = step
        for listener in self._svc.listeners:
            listener(self.run_id, step)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _next_key(self, name: str, *, first_bare: bool = True) -> str:
        """The key of the next call of ``name`` (see `kflow.engine.scopes`)."""
        return self._scopes.next_key(name, first_bare=first_bare)

    def _declared(self, kind: str, name: str) -> None:
        if self._definition is None:
            return
        names = self._definition.steps if kind == "step" else self._definition.events
        if name not in names:
            raise UndeclaredNameError(
                f"{kind} {name!r} is not declared by workflow {self.workflow_name!r} "
                f"v{self.workflow_version} (declared: {', '.join(names) or 'none'}); "
                f"declare it in @workflow({kind}s=[...]) under a new version"
            )

    def _suspending(self, reason: SuspendReason) -> Suspended:
        """Remember why the segment ends (for `take_suspend_reason`); raise the result."""
        self._suspend = reason
        self._scopes.mark_suspended()
        return Suspended(reason)

    def take_suspend_reason(self) -> SuspendReason | None:
        """Why the handler stopped, if it suspended; cleared by reading."""
        reason, self._suspend = self._suspend, None
        return reason

    def close(self) -> None:
        """End the segment: later calls from stray tasks raise `SegmentEnded`."""
        self._closed = True

    @property
    def poisoned(self) -> PersistenceError | None:
        return self._poison

    def with_persist_step_start(self, persist: bool = True) -> WorkflowContext:
        """Record each step's start before running it (one more write per step), so that
        a long step shows as running; by default only its outcome is written."""
        self._persist_start = persist
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
        result: T = await self._step_runner.run(
            name, fn, args, kwargs, retry=retry, timeout=timeout, compensate=compensate,
            key=key, result_type=result_type,
        )  # fmt: skip
        return result

    async def record_step_start(self, name: str) -> None:
        """Persist that step ``name`` started; a no-op once it has started or finished."""
        self._declared("step", _base(name))
        if name not in self._steps:
            now = self._svc.clock.now()
            await self._write(StepState(key=name, name=_base(name), attempts=1, started_at=now))

    async def record_step_complete(self, name: str, result: Any) -> None:
        await self._record_outcome(
            name, status=StepStatus.COMPLETED, result=encode(result), seq=self._next_seq()
        )

    async def record_step_failure(self, name: str, error: str) -> None:
        await self._record_outcome(name, status=StepStatus.FAILED, error=error)

    async def _record_outcome(self, name: str, **outcome: Any) -> None:
        self._declared("step", _base(name))
        now = self._svc.clock.now()
        prior = self._steps.get(name) or StepState(key=name, name=_base(name), started_at=now)
        outcome.setdefault("error", None)
        await self._write(
            replace(prior, attempts=max(prior.attempts, 1), completed_at=now, **outcome)
        )
        self._reach(now)

    async def record_step_compensated(self, name: str) -> None:
        prior = self._steps.get(name)
        if prior is None:
            raise KflowError(f"run {self.run_id}: no step {name!r} to mark compensated")
        await self._write(replace(prior, status=StepStatus.COMPENSATED, error=None))

    def get_step_state(self, name: str) -> StepState | None:
        state = self._steps.get(name)
        return replace(state) if state is not None and state.kind == StepKind.STEP else None

    def is_step_started(self, name: str) -> bool:
        return self.get_step_state(name) is not None

    def is_step_completed(self, name: str) -> bool:
        state = self.get_step_state(name)
        return state is not None and state.status in _DONE

    def get_step_result(self, name: str, result_type: type[T] | None = None) -> T | None:
        state = self.get_step_state(name)
        if state is None or state.status not in _DONE:
            return None
        return decode(state.result, result_type)  # type: ignore[no-any-return]

    def all_step_states(self) -> dict[str, StepState]:
        return {k: replace(s) for k, s in self._steps.items() if s.kind == StepKind.STEP}

    def completed_steps_reversed(self) -> list[str]:
        """Keys of completed steps, most recently completed first."""
        done = [s for s in self._steps.values() if s.kind == StepKind.STEP and s.seq]
        return [s.key for s in sorted(done, key=lambda s: s.seq or 0, reverse=True)]

    # -- compensation (see kflow.engine.compensations) -------------------------------------

    async def register_compensation(self, step: str, handler: Any) -> None:
        """Attach a compensation to completed step ``step`` (same forms as ``compensate=``)."""
        state = self._steps.get(step)
        if state is None or state.status != StepStatus.COMPLETED:
            raise KflowError(f"run {self.run_id}: step {step!r} has not completed")
        descriptor = self.compensations.describe(step, handler)
        await self._write(replace(state, compensation=descriptor))
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

    # -- sleeps and event waits (kflow.engine.waits) -----------------------------------------

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
        self._guard(new_work=True)
        encoded = encode(value)
        try:
            await self._svc.store.save_state(self.run_id, self._epoch, key, encoded)
        except PersistenceError as exc:
            self._poison = exc
            raise
        self._state[key] = encoded

    def load_state(self, key: str, type: Any = None) -> Any:
        """The value saved under ``key`` (as ``type`` if given), or None."""
        if key not in self._state:
            return None
        return decode(self._state[key], type)

    def take_saved_state(self) -> dict[str, Any]:
        """A snapshot of all saved state (JSON values)."""
        return dict(self._state)

    # -- resources -----------------------------------------------------------------

    @property
    def db(self) -> Database:
        """The application database pool the engine was given (``Engine(app_db=...)``)."""
        if self._svc.app_db is None:
            raise KflowError("no application database is configured: pass app_db= to Engine")
        return self._svc.app_db

    @property
    def http(self) -> HttpClient:
        """An HTTP client behind per-host circuit breakers; use it inside steps."""
        return HttpClient(self._svc.http_client, self._svc.breakers, self._http_timeout)

    @property
    def raw_http(self) -> httpx.AsyncClient:
        """The underlying httpx client, without breakers or the context's timeout."""
        return self._svc.http_client

    def set_http_timeout(self, timeout: timedelta | float | None) -> None:
        """Default timeout of ``ctx.http`` requests from this context (None: httpx's)."""
        self._http_timeout = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout


def _base(key: str) -> str:
    return key.split("#", 1)[0].split("[", 1)[0]
