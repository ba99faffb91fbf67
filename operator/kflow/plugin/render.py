"""What ``kubectl kflow`` prints, from API objects as plain dicts (pure: no I/O, no clock).

Everything takes ``now`` so ages read the same way in tests as on a terminal, and reads
the status defensively (``.get`` with defaults): the plugin may be older or newer than
the operator that wrote the status, and a half-written status must still render.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from kflow._models import TERMINAL

__all__ = [
    "FINISHED",
    "OUTPUT_CHARS",
    "describe",
    "human_duration",
    "runs_table",
    "step_duration",
    "table",
    "waiting_summary",
]

OUTPUT_CHARS = 600
"""How much of a run's output ``describe`` shows (the status holds at most 16 KiB)."""

FINISHED = frozenset(status.value for status in TERMINAL)
"""Phases of runs that are over."""

Obj = Mapping[str, Any]


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time from an API object, or None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def human_duration(delta: timedelta) -> str:
    """A duration as ``kubectl get`` prints ages (k8s.io/apimachinery's HumanDuration), so
    the plugin's AGE column agrees with ``kubectl get wfr``."""
    seconds = int(delta.total_seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        rest = seconds % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        rest = hours % 24
        return f"{days}d{rest}h" if rest else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years, rest_days = divmod(days, 365)
    if years < 8:
        return f"{years}y{rest_days}d" if rest_days else f"{years}y"
    return f"{years}y"


def age(value: Any, now: datetime) -> str:
    at = parse_time(value)
    return "<unknown>" if at is None else human_duration(now - at)


def step_duration(started: Any, completed: Any, now: datetime | None) -> str:
    """How long a step took; a step still in flight counts up to ``now`` (None when the
    run is over: a wait a cancel cut short never ends). Sub-minute durations keep their
    fraction: most steps take milliseconds."""
    start, end = parse_time(started), parse_time(completed)
    if start is None or (end is None and now is None):
        return ""
    elapsed = (end or now or start) - start
    seconds = elapsed.total_seconds()
    if seconds < 0:
        text = "0s"
    elif seconds < 1:
        text = f"{seconds * 1000:.0f}ms"
    elif seconds < 60:
        text = f"{seconds:.2f}s"
    else:
        text = human_duration(elapsed)
    return text if end is not None else f"{text} so far"


def _clock(value: Any) -> str:
    at = value if isinstance(value, datetime) else parse_time(value)
    return "" if at is None else at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], indent: str = "") -> str:
    """Left-aligned columns three spaces apart, as kubectl prints them."""
    grid = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(row[i]) for row in grid) for i in range(len(headers))]
    lines = [
        indent + "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in grid
    ]
    return "\n".join(lines)


def _wait(waiting: Any) -> tuple[str, datetime | None] | None:
    if not isinstance(waiting, Mapping) or not waiting.get("kind"):
        return None
    head = str(waiting["kind"])
    if waiting.get("event"):
        head += f" {waiting['event']}"
    return head, parse_time(waiting.get("until"))


def _left(until: datetime, now: datetime) -> str:
    # Rounded up: "0s left" would read as due while the wait still has a fraction to go.
    left = math.ceil((until - now).total_seconds())
    return "due" if left <= 0 else f"{human_duration(timedelta(seconds=left))} left"


def waiting_summary(waiting: Any, now: datetime) -> str:
    """``event approved (59m left)``, ``sleep (4m12s left)``, ``retry (due)``."""
    wait = _wait(waiting)
    if wait is None:
        return ""
    head, until = wait
    return head if until is None else f"{head} ({_left(until, now)})"


def _waiting_detail(waiting: Any, now: datetime) -> str | None:
    """The wait with its absolute time: ``event approved until 2024-...Z (59m left)``."""
    wait = _wait(waiting)
    if wait is None:
        return None
    head, until = wait
    return head if until is None else f"{head} until {_clock(until)} ({_left(until, now)})"


def _status(run: Obj) -> Obj:
    status = run.get("status")
    return status if isinstance(status, Mapping) else {}


def runs_table(runs: Sequence[Obj], now: datetime, *, all_namespaces: bool) -> str:
    """The ``runs`` listing: ``kubectl get wfr``'s columns, with the wait spelled out."""
    headers = ["NAME", "WORKFLOW", "VERSION", "PHASE", "STEP", "WAITING", "AGE"]
    if all_namespaces:
        headers.insert(0, "NAMESPACE")
    rows = []

    def key(run: Obj) -> tuple[str, str]:
        return run["metadata"].get("namespace", ""), run["metadata"]["name"]

    for run in sorted(runs, key=key):
        meta, spec, status = run["metadata"], run.get("spec") or {}, _status(run)
        version = status.get("workflowVersion") or spec.get("version")
        row = [
            meta["name"],
            str(spec.get("workflow", "")),
            "" if version is None else str(version),
            str(status.get("phase") or ""),
            str(status.get("currentStep") or ""),
            waiting_summary(status.get("waiting"), now),
            age(meta.get("creationTimestamp"), now),
        ]
        if all_namespaces:
            row.insert(0, meta.get("namespace", ""))
        rows.append(row)
    return table(headers, rows)


def _field(label: str, value: str) -> str:
    """``Label:  value``, continuation lines indented under the value."""
    first, *rest = value.splitlines() or [""]
    pad = " " * 15
    return "\n".join([f"{label + ':':<15}{first}".rstrip(), *(pad + line for line in rest)])


def _output(status: Obj) -> str | None:
    if status.get("outputTruncated"):
        return "(too large for the status; it is stored in PostgreSQL)"
    if status.get("output") is None:
        return None
    text = json.dumps(status["output"], ensure_ascii=False)
    if len(text) <= OUTPUT_CHARS:
        return text
    return f"{text[:OUTPUT_CHARS]}... ({len(text)} characters in all)"


def _steps(status: Obj, now: datetime) -> list[str]:
    running_until = None if status.get("phase") in FINISHED else now
    steps = [s for s in status.get("steps") or [] if isinstance(s, Mapping)]
    if not steps:
        return ["Steps:         <none>"]
    rows, errors = [], {}
    for i, step in enumerate(steps):
        rows.append([
            str(step.get("name", "")),
            str(step.get("state", "")),
            str(step.get("attempts", 0)),
            _clock(step.get("startedAt")),
            _clock(step.get("completedAt")),
            step_duration(step.get("startedAt"), step.get("completedAt"), running_until),
        ])  # fmt: skip
        if step.get("error"):
            errors[i] = str(step["error"])
    lines = ["Steps:"]
    omitted = status.get("stepsOmitted") or 0
    if omitted:
        lines.append(f"  ({omitted} earlier steps are not in the status)")
    headers = ["NAME", "STATE", "ATTEMPTS", "STARTED", "COMPLETED", "DURATION"]
    rendered = table(headers, rows, indent="  ").splitlines()
    lines.append(rendered[0])
    for i, line in enumerate(rendered[1:]):
        lines.append(line)
        if i in errors:
            # Under its step: errors are too long for a column, and often multi-line.
            lines.extend(f"      {part}" for part in f"error: {errors[i]}".splitlines())
    return lines


def _deliveries(status: Obj) -> list[str]:
    events = [e for e in status.get("events") or [] if isinstance(e, Mapping)]
    if not events:
        return ["Events delivered: <none>"]
    rows = []
    for event in events:
        detail = ""
        if event.get("consumedBy"):
            detail = f"by {event['consumedBy']}"
        if event.get("message"):
            detail = str(event["message"])
        rows.append([str(event.get("name", "")), str(event.get("state", "")), detail])
    return ["Events delivered:", table(["NAME", "STATE", "DETAIL"], rows, indent="  ")]


def _conditions(status: Obj, now: datetime) -> list[str]:
    conditions = [c for c in status.get("conditions") or [] if isinstance(c, Mapping)]
    if not conditions:
        return ["Conditions:    <none>"]
    rows = [
        [
            str(c.get("type", "")),
            str(c.get("status", "")),
            str(c.get("reason", "")),
            age(c.get("lastTransitionTime"), now),
            str(c.get("message") or "").replace("\n", " "),
        ]
        for c in conditions
    ]
    headers = ["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"]
    return ["Conditions:", table(headers, rows, indent="  ")]


def _executor(status: Obj) -> str | None:
    executor = status.get("executor")
    if not isinstance(executor, Mapping) or not executor.get("kind"):
        return None
    text = str(executor["kind"])
    if executor.get("pod"):
        text += f" (segment Pod {executor['pod']})"
    if executor.get("message"):
        text += f"\nlast failure: {executor['message']}"
    return text


def _kube_events(events: Sequence[Obj] | None, now: datetime, refused: str | None) -> list[str]:
    if refused is not None:
        return [f"Events:        not shown: {refused}"]
    if not events:
        return ["Events:        <none>"]

    def when(e: Obj) -> str:
        return str(e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp") or "")

    rows = []
    for event in sorted(events, key=when):
        seen = age(when(event), now)
        count = event.get("count") or 1
        if count > 1:
            seen += f" (x{count} over {age(event.get('firstTimestamp'), now)})"
        source = event.get("source") or {}
        rows.append([
            str(event.get("type", "")),
            str(event.get("reason", "")),
            seen,
            str(source.get("component") or event.get("reportingComponent") or ""),
            str(event.get("message") or "").replace("\n", " "),
        ])  # fmt: skip
    return ["Events:", table(["TYPE", "REASON", "AGE", "FROM", "MESSAGE"], rows, indent="  ")]


def describe(
    run: Obj,
    events: Sequence[Obj] | None,
    now: datetime,
    *,
    events_refused: str | None = None,
) -> str:
    """``kubectl kflow describe``: the run's status in full, then its Kubernetes Events
    (``events_refused`` says why they could not be read)."""
    meta, spec, status = run["metadata"], run.get("spec") or {}, _status(run)
    version = status.get("workflowVersion") or spec.get("version")
    workflow = str(spec.get("workflow", ""))
    if version is not None:
        workflow += f" v{version}"
    if status.get("signature"):
        workflow += f" (signature {str(status['signature'])[:12]})"
    lines = [
        _field("Name", meta["name"]),
        _field("Namespace", meta.get("namespace", "")),
        _field("Workflow", workflow),
        _field("Phase", str(status.get("phase") or "<none>: no operator has taken the run up yet")),
        _field("Created", f"{_clock(meta.get('creationTimestamp'))} "
                          f"({age(meta.get('creationTimestamp'), now)} ago)"),
    ]  # fmt: skip
    if status.get("runId"):
        lines.append(_field("Run ID", str(status["runId"])))
    optional = [
        ("Current step", status.get("currentStep")),
        ("Waiting", _waiting_detail(status.get("waiting"), now)),
        ("Executor", _executor(status)),
        ("Error", status.get("error")),
        ("Output", _output(status)),
    ]
    lines.extend(_field(label, str(value)) for label, value in optional if value)
    lines.extend(_steps(status, now))
    lines.extend(_deliveries(status))
    lines.extend(_conditions(status, now))
    lines.extend(_kube_events(events, now, events_refused))
    return "\n".join(lines)
