"""The Kubernetes resources, as pydantic models, and the CRDs generated from them.

`WorkflowDefinition` (short ``wfdef``) declares a workflow version; `WorkflowRun` (short ``wfr``)
asks for a run of one. These models are the single source of truth: ``crds/*.yaml`` is
generated from them (``make crds``: into ``crds/`` and the Helm chart's
``helm/kflow/files/crds/``, checked by a drift test), and
the controller parses every body it receives through them, so no code below the kopf
handlers touches raw dicts.

The pydantic JSON schema is turned into a Kubernetes *structural* schema: references
inlined, ``Optional[X]`` as ``nullable``, free-form JSON as
``x-kubernetes-preserve-unknown-fields``, titles dropped; descriptions stay, so
``kubectl explain wfr.spec`` documents the fields.
"""

from __future__ import annotations

import copy
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "GROUP",
    "VERSION",
    "Condition",
    "ExecutorView",
    "RESERVED_VOLUME",
    "LocalObjectReference",
    "PodTemplate",
    "StepStatusView",
    "Waiting",
    "WorkflowRunSpec",
    "WorkflowRunStatus",
    "WorkflowDefinitionSpec",
    "crd_manifests",
]

GROUP = "kflow.io"
VERSION = "v1alpha1"

Name = Annotated[
    str,
    Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", min_length=1, max_length=128),
]
JSON = Annotated[Any, Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})]


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class WorkflowRunSpec(_Model):
    """What to run: a workflow, optionally a version, and its input."""

    workflow: Name = Field(description="Name of the workflow to run.")
    version: int | None = Field(
        default=None, ge=1, description="Workflow version; the active one when omitted."
    )
    input: JSON = Field(default=None, description="The handler's input (any JSON).")
    timeout_seconds: int | None = Field(
        default=None,
        alias="timeoutSeconds",
        ge=1,
        description="Deadline for the whole run, overriding the workflow's timeout.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        alias="ttlSecondsAfterFinished",
        ge=0,
        le=2**31 - 1,  # as a Job's (int32)
        description="Delete this WorkflowRun this long after its run finished (Completed, "
        "Failed, Compensated, ...); the operator's KFLOW_RUN_TTL when omitted. The run's "
        "history stays in PostgreSQL.",
    )


class StepStatusView(_Model):
    """One step (or sleep, or event wait) as shown in the run's status."""

    name: str
    state: str
    attempts: int = 0
    started_at: datetime | None = Field(default=None, alias="startedAt")
    completed_at: datetime | None = Field(default=None, alias="completedAt")
    error: str | None = None


class Waiting(_Model):
    """What a Waiting run waits for."""

    kind: Literal["sleep", "event", "retry"]
    until: datetime | None = Field(default=None, description="Wake time or event deadline.")
    event: str | None = None


class Condition(_Model):
    """One condition of a run, by the Kubernetes API conventions. ``Succeeded``
    (``Unknown`` until the run ends, then ``True`` or ``False``), ``Failed`` (``True``
    once it ended otherwise than Completed: failed, compensated, cancelled, retired),
    ``Waiting`` and ``Blocked`` always; ``SpecChanged`` (True) while the spec's workflow,
    version or input differs from what the run started with. A condition that does not
    hold has no message."""

    type: Literal["Succeeded", "Failed", "Waiting", "Blocked", "SpecChanged"]
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str | None = None
    last_transition_time: datetime = Field(alias="lastTransitionTime")
    observed_generation: int | None = Field(
        default=None,
        alias="observedGeneration",
        description="The .metadata.generation the condition was set from.",
    )


class EventDelivery(_Model):
    """An event delivered by annotation, and what became of it."""

    name: str
    state: Literal["pending", "consumed", "rejected"]
    consumed_by: str | None = Field(default=None, alias="consumedBy")
    message: str | None = Field(
        default=None, description="Why it was rejected (the entry names the event)."
    )
    at: datetime | None = Field(
        default=None,
        description="When it was received (refused before it reached the inbox: when it "
        "was refused); the list is in this order.",
    )


class ExecutorView(_Model):
    """Where the run's segments execute, and what last went wrong there."""

    kind: Literal["inline", "pod"]
    pod: str | None = Field(
        default=None, description="The segment Pod running now (none between segments)."
    )
    message: str | None = Field(
        default=None, description="The last failure of a segment Pod, until one succeeds."
    )


class WorkflowRunStatus(_Model):
    """Written by the operator only; mirrors the run's state in PostgreSQL (bounded in
    size: long step lists and large outputs are summarised, the whole is in the database)."""

    phase: str | None = None
    run_id: str | None = Field(default=None, alias="runId")
    workflow_version: int | None = Field(default=None, alias="workflowVersion")
    signature: str | None = None
    current_step: str | None = Field(default=None, alias="currentStep")
    steps: list[StepStatusView] = Field(default_factory=list)
    steps_omitted: int = Field(default=0, alias="stepsOmitted")
    waiting: Waiting | None = None
    output: JSON = None
    output_truncated: bool = Field(default=False, alias="outputTruncated")
    error: str | None = None
    events: list[EventDelivery] = Field(default_factory=list)
    executor: ExecutorView | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(default=None, alias="observedGeneration")


RESERVED_VOLUME = "tmp"
"""The segment Pod's own volume: the writable ``/tmp`` under a read-only root."""

RESERVED_LABEL_PREFIX = "kflow.io/"
"""Labels kflow sets on segment Pods (the run, the segment): a template cannot set them."""


class LocalObjectReference(_Model):
    """A Secret in the run's namespace, by name."""

    name: str = Field(min_length=1)


class PodTemplate(_Model):
    """Where the pod executor runs this workflow's segments."""

    image: str
    command: list[str] | None = Field(
        default=None, description="The runner's command; the image's ``kflow`` when omitted."
    )
    modules: list[str] = Field(
        default_factory=list,
        description="Python modules the runner imports (KFLOW_WORKFLOW_MODULES); the "
        "image's own setting when empty.",
    )
    env: list[JSON] = Field(default_factory=list)
    env_from: list[JSON] = Field(default_factory=list, alias="envFrom")
    resources: JSON = None
    service_account_name: str | None = Field(default=None, alias="serviceAccountName")
    node_selector: dict[str, str] | None = Field(default=None, alias="nodeSelector")
    tolerations: list[JSON] = Field(default_factory=list)
    affinity: JSON = None
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list,
        alias="imagePullSecrets",
        description="Secrets to pull the image with, added to the operator's "
        "(KFLOW_RUNNER_IMAGE_PULL_SECRETS).",
    )
    volumes: list[JSON] = Field(
        default_factory=list, description="More volumes of the Pod (``tmp`` is kflow's own)."
    )
    volume_mounts: list[JSON] = Field(
        default_factory=list,
        alias="volumeMounts",
        description="Where the runner container mounts them (``/tmp`` is kflow's own).",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="More labels of the Pod (``kflow.io/`` ones are kflow's own).",
    )
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations of the Pod.")

    @model_validator(mode="after")
    def _nothing_of_kflows_own(self) -> PodTemplate:
        """A template adds to the segment Pod; it cannot replace what kflow relies on."""
        if RESERVED_VOLUME in [v.get("name") for v in self.volumes if isinstance(v, dict)]:
            raise ValueError(f"volumes: {RESERVED_VOLUME!r} is the segment Pod's own (/tmp)")
        mounts = [m.get("mountPath") for m in self.volume_mounts if isinstance(m, dict)]
        if any(isinstance(path, str) and path.rstrip("/") == "/tmp" for path in mounts):
            raise ValueError("volumeMounts: /tmp is the segment Pod's own; mount elsewhere")
        taken = sorted(k for k in self.labels if k.startswith(RESERVED_LABEL_PREFIX))
        if taken:
            raise ValueError(
                f"labels: {', '.join(taken)}: {RESERVED_LABEL_PREFIX} labels are kflow's own "
                "(they link a Pod to its run)"
            )
        return self


class WorkflowDefinitionSpec(_Model):
    """A workflow version, as deployed code declares it (``kubectl kflow manifest``)."""

    workflow: Name
    version: int = Field(ge=1)
    signature: str = Field(pattern=r"^[0-9a-f]{64}$")
    steps: list[Name] = Field(default_factory=list)
    events: list[Name] = Field(default_factory=list)
    timeout_seconds: int | None = Field(default=None, alias="timeoutSeconds", ge=1)
    active: bool = True
    executor: Literal["inline", "pod"] | None = Field(
        default=None, description="Where segments run; the operator's default when omitted."
    )
    template: PodTemplate | None = None


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema as a Kubernetes structural OpenAPI v3 schema."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
            extra = {k: v for k, v in node.items() if k != "$ref"}
            return walk({**target, **extra})
        node = dict(node)
        if "anyOf" in node:
            options = node.pop("anyOf")
            concrete = [o for o in options if o.get("type") != "null"]
            if len(concrete) != 1:
                raise ValueError(f"no structural form for a union of {concrete}")
            node = {**concrete[0], **node}
            if len(concrete) < len(options):
                node["nullable"] = True
            return walk(node)
        if node.get("x-kubernetes-preserve-unknown-fields"):
            keep = {k: node[k] for k in ("description",) if k in node}
            return {**keep, "x-kubernetes-preserve-unknown-fields": True}
        for key in ("title", "$defs", "default"):
            node.pop(key, None)
        if isinstance(node.get("description"), str):  # a docstring's line breaks
            node["description"] = " ".join(node["description"].split())
        if not isinstance(node.get("additionalProperties", {}), dict):
            del node["additionalProperties"]  # extra="forbid": structural schemas prune
        return {k: walk(v) for k, v in node.items()}

    return walk(schema)  # type: ignore[no-any-return]


def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    return structural(model.model_json_schema(by_alias=True, mode="serialization"))


def _crd(
    *, kind: str, plural: str, short: str, spec: type[BaseModel], status: dict[str, Any],
    columns: list[dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["kflow"],  # not "all": `kubectl get all` lists no runs
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "spec": _model_schema(spec),
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_manifests() -> list[dict[str, Any]]:
    """The CRDs of `WorkflowDefinition` and `WorkflowRun`, as the API server takes them."""
    run_status = _model_schema(WorkflowRunStatus)
    return [
        _crd(
            kind="WorkflowDefinition",
            plural="workflowdefinitions",
            short="wfdef",
            spec=WorkflowDefinitionSpec,
            status={"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            columns=[
                {"name": "Workflow", "type": "string", "jsonPath": ".spec.workflow"},
                {"name": "Version", "type": "integer", "jsonPath": ".spec.version"},
                {"name": "Active", "type": "boolean", "jsonPath": ".spec.active"},
                {"name": "Executor", "type": "string", "jsonPath": ".spec.executor"},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            ],
        ),
        _crd(
            kind="WorkflowRun",
            plural="workflowruns",
            short="wfr",
            spec=WorkflowRunSpec,
            status=run_status,
            columns=[
                {"name": "Workflow", "type": "string", "jsonPath": ".spec.workflow"},
                {"name": "Version", "type": "integer", "jsonPath": ".status.workflowVersion"},
                {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                {"name": "Step", "type": "string", "jsonPath": ".status.currentStep"},
                {"name": "Waiting", "type": "string", "jsonPath": ".status.waiting.kind"},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            ],
        ),
    ]


def write_crds(folder: Path) -> list[Path]:
    """Write one YAML file per CRD into ``folder`` (what ``crds/`` holds)."""
    written = []
    for crd in crd_manifests():
        path = folder / f"{crd['metadata']['name']}.yaml"
        path.write_text(render(crd), encoding="utf-8")
        written.append(path)
    return written


def render(crd: dict[str, Any]) -> str:
    header = "# Generated from kflow/resources.py by `make crds`.\n"
    body: str = yaml.safe_dump(crd, sort_keys=False, width=100)
    return header + body


if __name__ == "__main__":
    for folder in sys.argv[1:] or ["crds"]:
        for written in write_crds(Path(folder)):
            print(written)
