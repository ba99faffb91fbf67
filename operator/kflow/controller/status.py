"""Building a WorkflowRun's ``status`` from the run's state in PostgreSQL (pure).

The status is a bounded summary: the last `max_steps` records (the count of older ones in
``stepsOmitted``), the output only when it is small, errors cut to a length, so that a
run with thousands of steps or a large output stays far below etcd's object limit. The
whole is in PostgreSQL.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from kflow._models import RunRecord, RunStatus, StepState, StepStatus
from kflow.resources import (
    Condition,
    EventDelivery,
    StepStatusView,
    Waiting,
    WorkflowRunStatus,
)

__all__ = ["MAX_EVENTS", "build_status", "rejection"]

MAX_ERROR = 1024
MAX_EVENTS = 20


def _cut(text: str | None, limit: int = MAX_ERROR) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 15] + "... (truncated)"


def rejection(name: str, reason: str) -> str:
    """A refused event's reason in its one form, on the status and in its Warning Event:
    without a leading ``event '<name>': `` (the engine's own refusals start so), since the
    status entry names the event and the Event names its annotation."""
    return reason.removeprefix(f"event {name!r}: ")


def _received(e: dict[str, Any]) -> datetime | None:
    """When an inbox event was received (the store's snapshot gives ``received_at``)."""
    at = e.get("received_at")
    return datetime.fromisoformat(at) if isinstance(at, str) else at


def _events(inbox: list[dict[str, Any]], refused: list[EventDelivery]) -> list[EventDelivery]:
    """The inbox's events and those refused before they reached it, in time order (ties
    in the inbox's own order; an event without a time last), the last `MAX_EVENTS`."""
    stored = [
        EventDelivery.model_validate(
            {
                "name": e["name"],
                "state": "rejected"
                if e.get("rejected")
                else "consumed"
                if e["consumed_by"]
                else "pending",
                "consumedBy": None if e.get("rejected") else e["consumed_by"],
                "message": _cut(rejection(e["name"], e["rejected"])) if e.get("rejected") else None,
                "at": _received(e),
            }
        )
        for e in inbox
    ]
    last = datetime.max.replace(tzinfo=UTC)
    merged = sorted([*stored, *refused], key=lambda d: d.at or last)  # stable
    return merged[-MAX_EVENTS:]


def _current_step(run: RunRecord, history: list[StepState]) -> str | None:
    """What an active run is at: the step running (or waiting) now, else the last one
    recorded (between two steps)."""
    if run.status.is_terminal or not history:
        return None
    active = (StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.WAITING)
    live = [s for s in history if s.status in active]
    return (live or history)[-1].key


def _state(run: RunRecord, step: StepState) -> str:
    """A step's state as shown: one a finished run left open (a wait a cancel cut short,
    a step its last executor died in) is ``interrupted``, not still going."""
    live = (StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.WAITING)
    if run.status.is_terminal and step.status in live:
        return "interrupted"
    return step.status.value


def _ending(run: RunRecord) -> tuple[str, str]:
    """``Succeeded`` and ``Failed`` for the run's phase (which is their reason): as
    Tekton's and Knative's ``Succeeded`` (Unknown until the run ends), and as a Job's
    ``Failed``, so ``kubectl wait --for=condition=Succeeded`` and
    ``--for=condition=Failed`` each wait for one way a run ends. A compensated,
    cancelled or retired run did not succeed: it is ``Failed``."""
    if run.status == RunStatus.COMPLETED:
        return "True", "False"
    if run.status.is_terminal:
        return "False", "True"
    return "Unknown", "False"


def _conditions(
    run: RunRecord,
    now: datetime,
    previous: list[Condition],
    spec_changed: str | None,
    generation: int | None,
) -> list[Condition]:
    """The run's conditions, by the API conventions: each type once, a reason always, a
    message only where there is something to say (a condition that does not hold says
    nothing: ``Blocked=False`` does not carry the run's error), the time each last
    changed its status, and the generation they were computed from."""
    before: dict[str, Condition] = {c.type: c for c in previous}
    blocked = run.status.is_blocked
    succeeded, failed = _ending(run)
    phase, error = run.status.value, run.error or ""
    wanted: list[tuple[str, str, str, str]] = [
        ("Succeeded", succeeded, phase, error if succeeded == "False" else ""),
        ("Failed", failed, phase, error if failed == "True" else ""),
        (
            "Waiting",
            "True" if run.status == RunStatus.WAITING else "False",
            run.suspend_kind.value.capitalize()
            if run.status == RunStatus.WAITING and run.suspend_kind
            else "NotWaiting",
            f"event {run.waiting_event}"
            if run.status == RunStatus.WAITING and run.waiting_event
            else "",
        ),
        (
            "Blocked",
            "True" if blocked else "False",
            phase if blocked else "NotBlocked",
            error if blocked else "",
        ),
    ]
    if spec_changed is not None:  # shown only while it holds
        wanted.append(("SpecChanged", "True", "SpecChanged", spec_changed))
    out = []
    for kind, status, reason, message in wanted:
        old = before.get(kind)
        since = old.last_transition_time if old is not None and old.status == status else now
        out.append(
            Condition.model_validate(
                {
                    "type": kind,
                    "status": status,
                    "reason": reason,
                    "message": _cut(message) or None,  # "" reads back as null on 1.20
                    "lastTransitionTime": since,
                    "observedGeneration": generation,
                }
            )
        )
    return out


def build_status(
    run: RunRecord,
    history: list[StepState],
    events: list[dict[str, Any]],
    *,
    now: datetime,
    generation: int | None,
    previous: WorkflowRunStatus | None = None,
    max_steps: int = 50,
    max_output_bytes: int = 16 * 1024,
    total_steps: int | None = None,
    refused: list[EventDelivery] | None = None,
    spec_changed: str | None = None,
) -> WorkflowRunStatus:
    """The status for ``run``; ``history`` in record order (perhaps only its end, of
    ``total_steps`` records), ``events`` from the inbox, ``refused`` the event annotations
    refused before they reached it (shown with them, in time order); ``spec_changed``:
    why the object's spec is not the run's, if it is not."""
    shown = history[-max_steps:]
    total = len(history) if total_steps is None else total_steps
    output, truncated = run.output, False
    if output is not None and len(json.dumps(output)) > max_output_bytes:
        output, truncated = None, True
    waiting = None
    if run.status == RunStatus.WAITING and run.suspend_kind is not None:
        waiting = Waiting(kind=run.suspend_kind.value, until=run.wake_at, event=run.waiting_event)
    refused = refused or []
    return WorkflowRunStatus.model_validate(
        {
            "phase": run.status.value,
            "runId": str(run.run_id),
            "workflowVersion": run.workflow_version,
            "signature": run.signature,
            "currentStep": _current_step(run, history),
            "steps": [
                StepStatusView.model_validate(
                    {
                        "name": s.key,
                        "state": _state(run, s),
                        "attempts": s.attempts,
                        "startedAt": s.started_at,
                        "completedAt": s.completed_at,
                        "error": _cut(s.error, 512),
                    }
                )
                for s in shown
            ],
            "stepsOmitted": total - len(shown),
            "waiting": waiting,
            "output": output,
            "outputTruncated": truncated,
            "error": _cut(run.error),
            "events": _events(events, refused),
            "conditions": _conditions(
                run, now, previous.conditions if previous else [], spec_changed, generation
            ),
            "observedGeneration": generation,
        }
    )
