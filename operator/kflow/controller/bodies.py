"""Reading the objects the API server sends into typed values (pure).

The kopf handlers (and the two direct reads of objects: the Workflow listing at start,
an annotation pass's re-read) parse a body here, once; nothing below them indexes a
body. What cannot be parsed is a value too (`Invalid`), so the code that reports it
decides how.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kflow._serde import describe_validation_error
from kflow.controller.annotations import ACTIONS, EVENT_PREFIX
from kflow.controller.runs import RunRef
from kflow.resources import WorkflowDefinitionSpec, WorkflowRunSpec, WorkflowRunStatus

__all__ = [
    "FIXED",
    "Invalid",
    "WorkflowObject",
    "kflow_annotations",
    "run_ref",
    "run_spec",
    "run_status",
    "spec_edits",
    "workflow_object",
]

FIXED = ("workflow", "version", "input")
"""The fields of a WorkflowRun's spec that cannot change once its run exists."""


@dataclass(frozen=True)
class Invalid:
    """A spec that does not validate; ``message`` says where and why."""

    message: str


@dataclass(frozen=True)
class WorkflowObject:
    """A `WorkflowDefinition` resource as seen: its identity, and its spec or why it is invalid."""

    uid: str
    namespace: str
    name: str
    spec: WorkflowDefinitionSpec | Invalid


def run_ref(body: Mapping[str, Any]) -> RunRef:
    meta = body["metadata"]
    return RunRef(
        namespace=meta["namespace"], name=meta["name"], uid=meta["uid"],
        generation=meta.get("generation"),
    )  # fmt: skip


def run_spec(body: Mapping[str, Any]) -> WorkflowRunSpec | Invalid:
    try:
        return WorkflowRunSpec.model_validate(dict(body.get("spec") or {}))
    except ValidationError as exc:
        return Invalid(describe_validation_error(exc))


def run_status(body: Mapping[str, Any]) -> WorkflowRunStatus | None:
    """The status the object has now, if any; one that another version of the operator
    wrote may not parse (then None: the first write replaces it whole)."""
    live = body.get("status")
    if not live:
        return None
    with contextlib.suppress(ValidationError):
        return WorkflowRunStatus.model_validate(dict(live))
    return None


def spec_edits(before: WorkflowRunSpec, after: WorkflowRunSpec) -> list[str]:
    """The fixed fields (`FIXED`) that ``after`` changes, as ``spec.<field>``."""
    return [f"spec.{name}" for name in FIXED if getattr(before, name) != getattr(after, name)]


def kflow_annotations(body: Mapping[str, Any]) -> dict[str, str]:
    """The object's annotations that kflow acts on (events to deliver, actions)."""
    found = (body.get("metadata") or {}).get("annotations") or {}
    return {str(k): str(v) for k, v in found.items() if k.startswith(EVENT_PREFIX) or k in ACTIONS}


def workflow_object(body: Mapping[str, Any]) -> WorkflowObject:
    meta = body["metadata"]
    spec: WorkflowDefinitionSpec | Invalid
    try:
        spec = WorkflowDefinitionSpec.model_validate(dict(body.get("spec") or {}))
    except ValidationError as exc:  # the CRD's schema lets little through
        spec = Invalid(describe_validation_error(exc))
    return WorkflowObject(
        uid=meta["uid"], namespace=meta.get("namespace") or "", name=meta["name"], spec=spec
    )
