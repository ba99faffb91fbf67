"""`TrackedRun`: the controller's one record of each WorkflowRun it knows.

A record exists from the first attempt to adopt a WorkflowRun until the controller
forgets it (its WorkflowRun is deleted), and holds everything the controller keeps about
the run between two events: where the object lives (`RunRef`); whether adoption refused
it; what was last seen of the run once adopted (workflow, version, phase, TTL); what
each executor does with it (the inline segment's task, the pod executor's `PodSlot`),
its retry counters; and every timer that acts on this run alone (the next adoption
attempt, the next annotation pass, its Pod's start deadline and lost-node grace period).
`TrackedRun.close` cancels those timers; the controller's ``forget`` is the one place a
record is dropped, and whoever finds a record gone (or replaced) knows the run was
forgotten meanwhile.

Kept elsewhere, because it is theirs: what is known per *Pod* (an end seen before the
Pod's name was recorded, a finished Pod's deletion timer: `kflow.controller.pod_executor`),
the status mirror's write state (`kflow.controller.mirror`), and wake-up and expiry
times (the timer wheels: one heap for every run).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from typing import NamedTuple

from kflow._models import RunStatus
from kflow.controller.pod_states import PodSlot

__all__ = ["RETRY_AFTER", "Purpose", "RunRef", "TimerKey", "TrackedRun"]

RETRY_AFTER = 5.0
"""Seconds before work on a run that hit a transient failure of the store or the API
server is tried again (adoption, annotations, a segment Pod's dispatch, expiry)."""


@dataclass(frozen=True)
class RunRef:
    """Where a run's WorkflowRun lives."""

    namespace: str
    name: str
    uid: str
    generation: int | None = None

    @property
    def run_id(self) -> uuid.UUID:
        """The run's id: the WorkflowRun's uid (so creating the run is idempotent)."""
        return uuid.UUID(self.uid)


class Purpose(Enum):
    """What a timer of a run is for."""

    ADOPTION = "adoption"
    """The next attempt to adopt the WorkflowRun, after a transient failure."""
    ANNOTATIONS = "annotations"
    """The next pass over its annotations, after a transient failure."""
    POD_START = "pod start"
    """Its segment Pod's start deadline (``pod_start_timeout``)."""
    POD_GONE = "pod gone"
    """A deleted segment Pod's grace period: past it, its node counts as lost."""


class TimerKey(NamedTuple):
    """A run's timer: one per purpose, and per Pod for the Pod's own."""

    purpose: Purpose
    pod: str | None = None


@dataclass(eq=False)
class TrackedRun:
    """What the controller keeps of one WorkflowRun (see the module docstring)."""

    ref: RunRef
    refused: bool = False
    """Refused for good (invalid spec or input, reported once): never tried again."""

    phase: RunStatus | None = None
    """The run's phase as last seen; None until the run is adopted."""
    workflow: str = ""
    version: int | None = None
    ttl: timedelta | None = None
    """How long after the run finished its WorkflowRun is deleted (None: kept)."""
    event_at: float | None = None
    """When an event that wakes the run was stored (monotonic; the latency metric)."""
    problem: str | None = None
    """The last segment Pod failure, shown on the status until a segment goes through."""
    spec_changed: str | None = None
    """Why the object's spec is not the run's (its fixed fields were edited after the run
    started), shown on the status (condition ``SpecChanged``) while it lasts."""

    steal: bool = False
    """The next segment takes the run's lease even if held (its holder is known dead)."""
    inline_failures: int = 0
    """Inline segments in a row that the store or a held lease stopped (their back-off)."""
    pod_failures: int = 0
    """Segment Pods in a row that failed (counted against ``segment_retries``). Apart from
    `inline_failures`: an outage while the run was inline does not use up its Pods' retries."""
    segment: asyncio.Task[None] | None = None
    """Inline: the task running the run's segment. Forgetting the run does not cancel it
    (a cancel stopped it before); it ends on its own."""
    again: bool = False
    """Inline: submitted while its segment ran; it runs again right after."""
    pod: PodSlot = field(default_factory=PodSlot)
    """The pod executor's state of the run (`kflow.controller.pod_states`)."""
    timers: dict[TimerKey, asyncio.TimerHandle] = field(default_factory=dict)

    @property
    def run_id(self) -> uuid.UUID:
        return self.ref.run_id

    @property
    def adopted(self) -> bool:
        """The run exists and is tracked (its phase is known)."""
        return self.phase is not None

    def arm(self, key: TimerKey, seconds: float, call: Callable[[], None]) -> None:
        """Call ``call`` in ``seconds``, replacing the timer of the same key."""
        self.disarm(key)

        def fire() -> None:
            if self.timers.get(key) is handle:
                del self.timers[key]
            call()

        handle = asyncio.get_running_loop().call_later(max(seconds, 0.0), fire)
        self.timers[key] = handle

    def armed(self, key: TimerKey) -> bool:
        return key in self.timers

    def disarm(self, key: TimerKey) -> None:
        timer = self.timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def disarm_pod(self, pod: str) -> None:
        """Cancel the timers about Pod ``pod`` (it ended, or is gone)."""
        self.disarm(TimerKey(Purpose.POD_START, pod))
        self.disarm(TimerKey(Purpose.POD_GONE, pod))

    def close(self) -> None:
        """The run is forgotten: cancel every timer it owns."""
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
