"""Compensation of completed steps (sagas), durable where it can be.

A step's compensation is recorded on its row as a descriptor:

- ``{"name": n, "with_result": true}`` — a `@compensation` called as ``fn(ctx, result)``;
- ``{"name": n, "args": [...]}`` — a `@compensation` bound to JSON arguments;
- ``{"closure": true}`` — a plain callable, kept only in this process's memory.

Named compensations survive restarts: the registry finds the function by name and the
arguments are in PostgreSQL. A closure is re-attached whenever the handler replays past
its step; when a cancel finds one that no replay has re-attached since a restart, the
step is marked ``compensation_failed`` and the run fails, saying that manual remediation
is required.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any

from kflow._engine.journal import Journal
from kflow._models import StepKind, StepState, StepStatus
from kflow._serde import decode, encode
from kflow._workflow import CompensationCall, CompensationDefinition, type_hints

__all__ = ["LOST_CLOSURE", "Compensations", "compensable", "outstanding"]

LOST_CLOSURE = (
    "its compensation was an in-process closure, lost when the process that registered "
    "it stopped; manual remediation is required"
)

Compensate = Callable[[], Awaitable[None]]


class Compensations:
    """The compensations of one run, as seen from one segment. ``ctx`` is what a named
    compensation gets as its first argument (the segment's `WorkflowContext`)."""

    def __init__(self, journal: Journal, ctx: object) -> None:
        self._journal = journal
        self._run_id = journal.run_id
        self._steps = journal.records
        self._ctx = ctx
        self._registry = journal.services.registry
        self._closures = journal.services.closures

    def describe(self, step: str, compensate: Any) -> dict[str, Any] | None:
        """The descriptor to store for ``compensate``; raises before the step runs if a
        named compensation is unknown or its arguments are not JSON."""
        if compensate is None:
            return None
        if isinstance(compensate, CompensationDefinition):
            self._known(step, compensate.name)
            return {"name": compensate.name, "with_result": True}
        if isinstance(compensate, tuple) and compensate and isinstance(compensate[0], str):
            compensate = CompensationCall(compensate[0], tuple(compensate[1:]))
        if isinstance(compensate, CompensationCall):
            self._known(step, compensate.name)
            try:
                args = encode(list(compensate.args))
            except TypeError as exc:
                raise TypeError(
                    f"step {step!r}: arguments of compensation {compensate.name!r} "
                    f"must be JSON-serialisable: {exc}"
                ) from exc
            return {"name": compensate.name, "args": args}
        if callable(compensate):
            return {"closure": True}
        raise TypeError(
            f"step {step!r}: compensate= takes a @compensation, compensation.bind(...), "
            f"a ('name', *args) tuple or a callable, not {type(compensate).__name__}"
        )

    def _known(self, step: str, name: str) -> None:
        if self._registry.compensation(name) is None:
            raise LookupError(
                f"step {step!r}: compensation {name!r} is not in the engine's registry; "
                "add it (Registry(..., compensation) or a module the registry loads) "
                "so it can still be found after a restart"
            )

    def keep(self, step: str, compensate: Any, result: Any) -> None:
        """Remember a closure compensation in this process, bound to the step's result."""
        if callable(compensate) and not isinstance(
            compensate, CompensationDefinition | CompensationCall
        ):
            self._closures.setdefault(self._run_id, {})[step] = functools.partial(
                compensate, result
            )

    def handler(self, step: str) -> Compensate | None:
        """A zero-argument coroutine function running the step's compensation, if any."""
        state = self._steps.get(step)
        descriptor = state.compensation if state is not None else None
        if state is None or descriptor is None:
            return None
        if descriptor.get("closure"):
            fn = self._closures.get(self._run_id, {}).get(step)
            return None if fn is None else _as_coroutine(fn)
        definition = self._registry.compensation(descriptor["name"])
        if definition is None:
            return None
        args = [state.result] if descriptor.get("with_result") else descriptor.get("args", [])
        hints = type_hints(definition.fn)
        params = list(inspect.signature(definition.fn).parameters)[1:]
        typed = [decode(a, hints.get(p)) for a, p in zip(args, params, strict=False)]
        typed += args[len(typed) :]
        return _as_coroutine(functools.partial(definition.fn, self._ctx, *typed))

    def _compensable(self) -> list[StepState]:
        return compensable(self._steps.values())

    def handlers(self) -> dict[str, Compensate]:
        found = {s.key: self.handler(s.key) for s in self._compensable()}
        return {k: h for k, h in found.items() if h is not None}

    async def run(self) -> list[tuple[str, bool]]:
        """Compensate in reverse completion order; each outcome is recorded before the next."""
        outcomes = []
        for state in self._compensable():
            if state.status not in _UNDOABLE:
                continue
            error: str | None = None
            try:
                # Inside the try: stored arguments that no longer fit the function's
                # types fail this compensation, they do not stop the others.
                handler = self.handler(state.key)
                if handler is None:
                    descriptor = state.compensation or {}
                    error = (
                        LOST_CLOSURE
                        if descriptor.get("closure")
                        else (
                            f"compensation {descriptor.get('name')!r} is not in the registry; "
                            "manual remediation is required"
                        )
                    )
                else:
                    await handler()
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            status = StepStatus.COMPENSATED if error is None else StepStatus.COMPENSATION_FAILED
            await self._journal.write(replace(state, status=status, error=error))
            outcomes.append((state.key, error is None))
        return outcomes


_UNDOABLE = frozenset({StepStatus.COMPLETED, StepStatus.COMPENSATION_FAILED})
"""A compensable step in these states has its compensation still to run."""


def compensable(records: Iterable[StepState]) -> list[StepState]:
    """The completed steps that have a compensation, most recently completed first."""
    done = [s for s in records if s.kind == StepKind.STEP and s.seq and s.compensation is not None]
    return sorted(done, key=lambda s: s.seq or 0, reverse=True)


def outstanding(records: Iterable[StepState]) -> bool:
    """Whether a completed step has a compensation that has not run (or that failed)."""
    return any(s.status in _UNDOABLE for s in compensable(records))


def _as_coroutine(fn: Callable[[], Any]) -> Compensate:
    async def call() -> None:
        value = fn()
        if isinstance(value, Awaitable):
            await value

    return call
