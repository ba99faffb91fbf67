"""`Scopes`: how a context numbers the kflow calls of the tasks a handler starts.

A handler is replayed from the top on every segment, and each call (step, sleep, wait)
must get the same key on every replay. Calls in the handler's own task are numbered in
call order. A task the handler (or one of its tasks) starts gets, at its first kflow
call, a scope ``<parent>.<k>``: the k-th of its parent's tasks to call kflow, its parent
being the scope it inherited when it was created (a context variable). Sibling tasks
started together (one ``gather``) make their first call in start order, so keys do not
depend on how a replay, where completed steps return at once, interleaves the branches.

A scope also remembers whether it (or a task it started) suspended the segment, so that
a suspension returned as a value (``gather(..., return_exceptions=True)``) stops that
scope's next call instead of letting it work on results the segment does not have.
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Scopes"]


@dataclass(eq=False)
class _Scope:
    """Where a task's kflow calls are numbered: the handler's task, or a task it started."""

    owner: Scopes
    task: asyncio.Task[Any] | None
    path: str
    parent: _Scope | None = None
    children: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    suspended: bool = False
    """This task, or one it started, suspended the segment."""


_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("kflow_scope", default=None)
"""The scope of the running task; tasks inherit their creator's at creation."""


class Scopes:
    """The scopes of one segment; made in the handler's task."""

    def __init__(self) -> None:
        self._root = _Scope(owner=self, task=asyncio.current_task(), path="")

    def next_key(self, name: str, *, first_bare: bool = True) -> str:
        """The key of the next call of ``name`` in the calling task: in the handler's
        own task ``name``, ``name#2``... (``name#1`` first when not ``first_bare``); in
        a task it started, ``name#t<scope>-<n>``."""
        scope = self._scope()
        n = scope.counts.get(name, 0) + 1
        scope.counts[name] = n
        if scope.path:
            return f"{name}#t{scope.path}-{n}"
        return name if n == 1 and first_bare else f"{name}#{n}"

    def suspended(self) -> bool:
        """Whether the calling task's scope — or, before its first kflow call, the scope
        it would get — has seen a suspension; without creating a scope, so that a refused
        call numbers nothing (keys stay as a replay will make them)."""
        scope, parent = self._find()
        return (scope or parent).suspended

    def mark_suspended(self) -> None:
        """The calling task suspends the segment: so do the tasks that wait for it, up to
        the handler."""
        scope: _Scope | None = self._scope()
        while scope is not None:
            scope.suspended = True
            scope = scope.parent

    def _scope(self) -> _Scope:
        scope, parent = self._find()
        if scope is not None:
            return scope
        parent.children += 1
        path = f"{parent.path}.{parent.children}" if parent.path else str(parent.children)
        # A task started after a suspension it will wait for may not record anything.
        scope = _Scope(owner=self, task=asyncio.current_task(), path=path, parent=parent,
                       suspended=parent.suspended)  # fmt: skip
        _SCOPE.set(scope)
        return scope

    def _find(self) -> tuple[_Scope | None, _Scope]:
        """The calling task's scope if it has one, else None and the scope a new one
        would belong to (the one it inherited at creation, or the handler's)."""
        task = asyncio.current_task()
        inherited = _SCOPE.get()
        if inherited is not None and inherited.owner is not self:
            inherited = None  # left in this task's context by an earlier segment
        if inherited is not None and inherited.task is task:
            return inherited, inherited
        if task is self._root.task:
            return self._root, self._root
        return None, inherited or self._root
