"""The Pod that runs one segment of a run, and how to read its state (pod executor, pure).

One Pod per segment (and per retry of a segment), named from the run and a number that
the executor counts in PostgreSQL (``-s1``, ``-s2``...), and labelled with the run's
uid, by which an operator that restarts finds — and adopts — the Pod it created.
It runs ``kflow runner --run <id>`` from the WorkflowDefinition's image, gets the store's DSN from a
Secret (never in the Pod spec), is owned by its WorkflowRun (deleted with it), carries
labels linking run and segment, and satisfies the *restricted* Pod Security Standard by
default: non-root, no privilege escalation, all capabilities dropped, RuntimeDefault
seccomp, read-only root filesystem, no service-account token (the runner needs no API).

`pod_end`, `pod_problem` and `pod_started` turn a Pod's status into what the executor
reports on the run: how it ended (exit codes of ``kflow runner``, OOM kills, evictions,
deletions), or why it does not start; `read_pod` reads a Pod body (from the watch or a
listing) into the `PodView` the executor works with.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kflow.controller.runs import RunRef
from kflow.resources import GROUP, RESERVED_VOLUME, VERSION, PodTemplate

__all__ = [
    "RUN_LABEL",
    "SEGMENT_LABEL",
    "PodEnd",
    "PodView",
    "pod_end",
    "pod_name",
    "pod_problem",
    "pod_started",
    "read_pod",
    "segment_pod",
]

RUN_LABEL = "kflow.io/run"
SEGMENT_LABEL = "kflow.io/segment"


def pod_name(ref: RunRef, segment: int) -> str:
    """``<run name>-<uid prefix>-s<segment>``, a valid DNS label (at most 63 characters)."""
    suffix = f"-{ref.uid[:8]}-s{segment}"
    stem = re.sub(r"[^a-z0-9-]", "-", ref.name.lower())[: 63 - len(suffix)].strip("-")
    return (stem or "run") + suffix


def segment_pod(
    ref: RunRef,
    *,
    segment: int,
    template: PodTemplate,
    dsn_secret: str,
    dsn_key: str = "dsn",
    schema: str,
    steal: bool = False,
    service_account: str | None = None,
    image_pull_secrets: list[str] | None = None,
) -> dict[str, Any]:
    """The Pod manifest for segment ``segment`` of the run behind ``ref``; ``steal``: the
    runner takes the lease even if held (the previous segment's Pod is known dead);
    ``image_pull_secrets``: the operator's, before the template's own."""
    env = [
        {"name": "KFLOW_DSN", "valueFrom": {"secretKeyRef": {"name": dsn_secret, "key": dsn_key}}},
        {"name": "KFLOW_SCHEMA", "value": schema},
        *template.env,
    ]
    if template.modules:
        env.append({"name": "KFLOW_WORKFLOW_MODULES", "value": json.dumps(template.modules)})
    container: dict[str, Any] = {
        "name": "runner",
        "image": template.image,
        "command": template.command or ["kflow"],
        "args": ["runner", "--run", ref.uid, *(["--steal"] if steal else [])],
        "env": env,
        "envFrom": template.env_from,
        # The root filesystem is read-only: workflow code gets a writable /tmp.
        "volumeMounts": [{"name": RESERVED_VOLUME, "mountPath": "/tmp"}, *template.volume_mounts],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
    }
    if template.resources:
        container["resources"] = template.resources
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": RESERVED_VOLUME, "emptyDir": {}}, *template.volumes],
    }
    pull = [*(image_pull_secrets or []), *(s.name for s in template.image_pull_secrets)]
    if pull:
        spec["imagePullSecrets"] = [{"name": name} for name in dict.fromkeys(pull)]
    if template.service_account_name or service_account:
        spec["serviceAccountName"] = template.service_account_name or service_account
    if template.node_selector:
        spec["nodeSelector"] = template.node_selector
    if template.tolerations:
        spec["tolerations"] = template.tolerations
    if template.affinity:
        spec["affinity"] = template.affinity
    metadata: dict[str, Any] = {
        "name": pod_name(ref, segment),
        "namespace": ref.namespace,
        # The template's labels first: kflow's own cannot be replaced (the model refuses
        # kflow.io/ keys; managed-by is set last).
        "labels": {
            **template.labels,
            RUN_LABEL: ref.uid,
            SEGMENT_LABEL: str(segment),
            "app.kubernetes.io/managed-by": "kflow",
        },
        "ownerReferences": [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "WorkflowRun",
                "name": ref.name,
                "uid": ref.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if template.annotations:
        metadata["annotations"] = dict(template.annotations)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": spec,
    }


@dataclass(frozen=True)
class PodEnd:
    """How a segment Pod ended. ``ok``: the runner recorded the segment's outcome."""

    ok: bool
    message: str


_EXITS = {
    2: "the runner's settings are invalid (see the Pod's log)",
    3: "another executor held the run's lease",
    4: "the runner could not reach the store or lost its lease; the run is intact",
    5: "the run does not exist in the store",
    137: "the runner was killed (SIGKILL)",
    143: "the runner was terminated (SIGTERM)",
}

_NOT_STARTING = {
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
}  # fmt: skip


def pod_end(pod: Mapping[str, Any], *, deleted: bool = False) -> PodEnd | None:
    """How the Pod ended, or None while it has not (``deleted``: its object is gone)."""
    status = pod.get("status") or {}
    phase = status.get("phase")
    if phase == "Succeeded":
        return PodEnd(True, "completed")
    if phase != "Failed":
        if deleted:
            return PodEnd(False, "the Pod was deleted before it finished")
        return None
    if status.get("reason"):  # Evicted, DeadlineExceeded, NodeLost...
        return PodEnd(False, f"{status['reason']}: {status.get('message') or 'no message'}")
    for container in status.get("containerStatuses") or []:
        ended = (container.get("state") or {}).get("terminated")
        if ended is None:
            continue
        code, reason = ended.get("exitCode"), ended.get("reason") or "Error"
        if reason == "OOMKilled":
            return PodEnd(False, "the runner ran out of memory (OOMKilled)")
        detail = _EXITS.get(code) or ended.get("message") or reason
        return PodEnd(False, f"the runner exited with code {code}: {detail}")
    return PodEnd(False, "the Pod failed without a container status")


def pod_problem(pod: Mapping[str, Any]) -> str | None:
    """Why a Pending Pod is not starting (image pull, configuration, scheduling), if known."""
    status = pod.get("status") or {}
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in _NOT_STARTING:
            return f"{waiting['reason']}: {waiting.get('message') or 'no message'}"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"{condition.get('reason')}: {condition.get('message') or 'no message'}"
    return None


def pod_started(pod: Mapping[str, Any]) -> bool:
    """A container of the Pod has started (running, or already ended)."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return any({"running", "terminated"} & set(c.get("state") or {}) for c in statuses)


@dataclass(frozen=True)
class PodView:
    """What the pod executor reads of a segment Pod."""

    name: str
    namespace: str
    run_id: uuid.UUID | None
    """The run it belongs to (its run label); None: the label is not a run id."""
    end: PodEnd | None
    """How it ended; None while it has not."""
    started: bool
    problem: str | None
    """Why it does not start, if it does not (`pod_problem`)."""
    deleting_by: datetime | None
    """Deleted: when its grace period ends (``deletionTimestamp``)."""
    finished_at: datetime | None
    """When its runner ended, if it has."""
    deleted: bool = False
    """The object is gone (the watch's DELETED event)."""


def read_pod(pod: Mapping[str, Any], *, deleted: bool = False) -> PodView:
    """The `PodView` of a Pod body (``deleted``: from the watch's DELETED event)."""
    meta = pod.get("metadata") or {}
    try:
        run_id: uuid.UUID | None = uuid.UUID(str((meta.get("labels") or {}).get(RUN_LABEL, "")))
    except ValueError:
        run_id = None
    deleting = meta.get("deletionTimestamp")
    return PodView(
        name=str(meta.get("name")),
        namespace=str(meta.get("namespace")),
        run_id=run_id,
        end=pod_end(pod, deleted=deleted),
        started=pod_started(pod),
        problem=pod_problem(pod),
        deleting_by=_timestamp(deleting) if deleting else None,
        finished_at=_finished_at(pod),
        deleted=deleted,
    )


def _timestamp(text: object) -> datetime:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00"))


def _finished_at(pod: Mapping[str, Any]) -> datetime | None:
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        ended = (container.get("state") or {}).get("terminated") or {}
        if ended.get("finishedAt"):
            return _timestamp(ended["finishedAt"])
    return None
