"""The pod executor's state of one run, as a state machine (pure).

::

    IDLE ──dispatch──▶ DISPATCHING ──placed(pod)──▶ RUNNING(pod) ──cancel──▶ STOPPING(pod)
     ▲                     │                           │                        │  ▲ cancel
     └─────abandoned───────┘                           │                        └──┘
     └─────────────────────────ended───────────────────┴──────────ended─────────┘

- IDLE: no Pod runs the run's segment and none is being made; a submit dispatches one.
- DISPATCHING: the executor looks for the run's live Pod (one made before a restart is
  adopted) or creates the next one. It is *abandoned* when there is nothing to run (the
  run is gone or has no pod template) or the dispatch failed (it is retried later).
- RUNNING: the Pod ``pod`` runs the segment; its end decides what follows.
- STOPPING: a cancel takes the run's lease and stops the Pod: its end, however it looks,
  is not a failure (the next Pod compensates).

Anything else is a bug: `PodSlot.step` refuses it (`IllegalTransition`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["IllegalTransition", "PodEvent", "PodSlot", "PodState"]


class PodState(Enum):
    IDLE = "idle"
    DISPATCHING = "dispatching"
    RUNNING = "running"
    STOPPING = "stopping"


class PodEvent(Enum):
    DISPATCH = "dispatch"
    """Submitted while idle: find or make the Pod of the next segment."""
    PLACED = "placed"
    """The Pod running the segment is known (made now, or adopted)."""
    ABANDONED = "abandoned"
    """The dispatch ended without a Pod (nothing to run, or a failure to retry later)."""
    CANCEL = "cancel"
    """A cancel takes the run's lease; its Pod is stopped."""
    ENDED = "ended"
    """The Pod ended (or counts as ended: deleted, lost, never started)."""


_S, _E = PodState, PodEvent
_NEXT: dict[tuple[PodState, PodEvent], PodState] = {
    (_S.IDLE, _E.DISPATCH): _S.DISPATCHING,
    (_S.DISPATCHING, _E.PLACED): _S.RUNNING,
    (_S.DISPATCHING, _E.ABANDONED): _S.IDLE,
    (_S.RUNNING, _E.CANCEL): _S.STOPPING,
    (_S.STOPPING, _E.CANCEL): _S.STOPPING,  # the cancel's kill after its lease taking
    (_S.RUNNING, _E.ENDED): _S.IDLE,
    (_S.STOPPING, _E.ENDED): _S.IDLE,
}
"""Every legal transition; a pair that is not here is a bug."""

_WITH_POD = frozenset({PodState.RUNNING, PodState.STOPPING})


class IllegalTransition(RuntimeError):
    """The pod executor tried a transition its state machine does not have (a bug)."""


@dataclass(frozen=True, slots=True)
class PodSlot:
    """Where the pod executor is with a run: its state, and the Pod of that state."""

    state: PodState = PodState.IDLE
    pod: str | None = None
    """The Pod running the segment (RUNNING, STOPPING), else None."""

    def __post_init__(self) -> None:
        if (self.pod is not None) != (self.state in _WITH_POD):
            raise IllegalTransition(f"a {self.state.value} slot with pod {self.pod!r}")

    @property
    def live(self) -> bool:
        """A Pod runs the segment (RUNNING or STOPPING): ``pod`` names it."""
        return self.state in _WITH_POD

    def step(self, event: PodEvent, pod: str | None = None) -> PodSlot:
        """The slot after ``event`` (``pod``: the Pod placed, for PLACED only)."""
        after = _NEXT.get((self.state, event))
        if after is None:
            raise IllegalTransition(f"{event.value} while {self.state.value}")
        if (pod is not None) != (event is PodEvent.PLACED):
            raise IllegalTransition(f"{event.value} with pod {pod!r}")
        if event is PodEvent.PLACED:
            return PodSlot(after, pod)
        return PodSlot(after, self.pod if after in _WITH_POD else None)
