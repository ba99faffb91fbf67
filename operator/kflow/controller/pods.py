"""`segment_pod`: the Pod that runs one segment of a run (pod executor, pure).

One Pod per segment, named deterministically from the run and the segment number, so
an operator that restarts adopts the Pod it created instead of creating a second one.
It runs ``kflow runner --run <id>`` from the Workflow's image, gets the store's DSN from a
Secret (never in the Pod spec), is owned by its WorkflowRun (deleted with it), carries
labels linking run and segment, and satisfies the *restricted* Pod Security Standard by
default: non-root, no privilege escalation, all capabilities dropped, RuntimeDefault
seccomp, read-only root filesystem, no service-account token (the runner needs no API).
"""

from __future__ import annotations

import json
import re
from typing import Any

from kflow.controller.mirror import RunRef
from kflow.resources import GROUP, VERSION, PodTemplate

__all__ = ["RUN_LABEL", "SEGMENT_LABEL", "pod_name", "segment_pod"]

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
    modules: list[str],
) -> dict[str, Any]:
    """The Pod manifest for segment ``segment`` of the run behind ``ref``."""
    env = [
        {"name": "KFLOW_DSN", "valueFrom": {"secretKeyRef": {"name": dsn_secret, "key": dsn_key}}},
        {"name": "KFLOW_SCHEMA", "value": schema},
        {"name": "KFLOW_WORKFLOW_MODULES", "value": json.dumps(modules)},
        *template.env,
    ]
    container: dict[str, Any] = {
        "name": "runner",
        "image": template.image,
        "command": template.command or ["kflow"],
        "args": ["runner", "--run", ref.uid],
        "env": env,
        "envFrom": template.env_from,
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
    }
    if template.service_account_name:
        spec["serviceAccountName"] = template.service_account_name
    if template.node_selector:
        spec["nodeSelector"] = template.node_selector
    if template.tolerations:
        spec["tolerations"] = template.tolerations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(ref, segment),
            "namespace": ref.namespace,
            "labels": {
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
        },
        "spec": spec,
    }
