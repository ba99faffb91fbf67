"""What a WorkflowRun's annotations ask for: events to deliver and actions to take (pure).

- ``event.kflow.io/<name>: <json>`` delivers event ``<name>`` with that payload (an empty
  value is ``null``). Its dedupe key is the name and a hash of the value, so a crash
  between storing the event and removing the annotation, or a stale watch event, never
  delivers it twice. The price: the same payload is delivered once per run — vary it
  (an id field) to send it again; a repeat is reported, not silently dropped.
- ``kflow.io/cancel: <reason>``, ``kflow.io/retire: <reason>``, ``kflow.io/retry: ""``.

Malformed JSON, an oversized payload or an invalid name is a `Rejected` annotation: the
operator reports it (Kubernetes Event, status) and removes it; nothing else is touched.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kflow._workflow import EVENT_NAME_RE

__all__ = ["Action", "EventAnnotation", "Rejected", "parse_annotations"]

EVENT_PREFIX = "event.kflow.io/"
RETRY = "kflow.io/retry"
ACTIONS: dict[str, Literal["cancel", "retire", "retry"]] = {
    "kflow.io/cancel": "cancel",
    "kflow.io/retire": "retire",
    RETRY: "retry",
}


@dataclass(frozen=True)
class EventAnnotation:
    key: str
    value: str
    name: str
    payload: Any
    dedupe_key: str


@dataclass(frozen=True)
class Action:
    key: str
    value: str
    verb: Literal["cancel", "retire", "retry"]


@dataclass(frozen=True)
class Rejected:
    key: str
    value: str
    name: str
    reason: str


def parse_annotations(
    annotations: Mapping[str, str], *, max_bytes: int
) -> list[EventAnnotation | Action | Rejected]:
    """Everything kflow should act on, in a stable order (by annotation key)."""
    found: list[EventAnnotation | Action | Rejected] = []
    for key in sorted(annotations):
        value = annotations[key]
        if key in ACTIONS:
            found.append(Action(key, value, ACTIONS[key]))
        elif key.startswith(EVENT_PREFIX):
            found.append(_event(key, value, max_bytes))
    return found


def _event(key: str, value: str, max_bytes: int) -> EventAnnotation | Rejected:
    name = key[len(EVENT_PREFIX) :]
    if not EVENT_NAME_RE.match(name):
        return Rejected(key, value, name, f"invalid event name {name!r}")
    size = len(value.encode())
    if size > max_bytes:
        return Rejected(key, value, name, f"payload is {size} bytes, over the {max_bytes} limit")
    try:
        payload = json.loads(value) if value.strip() else None
    except json.JSONDecodeError as exc:
        return Rejected(key, value, name, f"payload is not JSON: {exc}")
    digest = hashlib.sha256(value.encode()).hexdigest()[:32]
    return EventAnnotation(key, value, name, payload, f"{name}:{digest}")
