"""``kubectl kflow manifest``: the `WorkflowDefinition` resources a module's definitions declare.

The spec comes from the code itself (name, version, signature, steps, events, timeout),
so the operator can tell the deployed code from a run's, and it passes through
`kflow.resources.WorkflowDefinitionSpec`, the model the CRD is generated from: what this prints is
what the API server accepts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from kflow._errors import DefinitionError
from kflow._workflow import Registry, WorkflowDefinition
from kflow.resources import GROUP, VERSION, WorkflowDefinitionSpec

__all__ = [
    "ManifestError",
    "ManifestOptions",
    "load_definitions",
    "object_name",
    "render_manifests",
    "workflow_object",
]


@dataclass(frozen=True)
class ManifestOptions:
    """What the command line adds to the code's own contract."""

    module: str
    image: str | None = None
    executor: Literal["inline", "pod"] | None = None
    service_account: str | None = None
    namespace: str | None = None
    active: bool = True


class ManifestError(ValueError):
    """The module cannot be turned into Workflow resources (said in one line)."""


def object_name(workflow: str, version: int) -> str:
    """``<workflow>-v<version>`` as a valid object name: workflow names may hold capitals
    and underscores, which Kubernetes names may not."""
    base = re.sub(r"[^a-z0-9.-]", "-", workflow.lower())
    base = re.sub(r"[.-]*\.[.-]*", ".", base).strip(".-") or "workflow"
    return f"{base[:240]}-v{version}"


def load_definitions(module: str, only: str | None = None) -> list[WorkflowDefinition]:
    """The workflow definitions at the top level of ``module``, optionally only those
    named ``only``."""
    try:
        registry = Registry.from_modules([module])
    except ModuleNotFoundError as exc:
        raise ManifestError(f"cannot import module {module!r}: {exc}") from None
    except DefinitionError as exc:
        raise ManifestError(f"module {module!r} has invalid definitions: {exc}") from None
    except Exception as exc:
        raise ManifestError(
            f"importing module {module!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    found = sorted(registry.workflows(), key=lambda d: (d.name, d.version))
    if not found:
        raise ManifestError(f"module {module!r} defines no @workflow at its top level")
    if only is not None:
        chosen = [d for d in found if d.name == only]
        if not chosen:
            names = ", ".join(sorted({d.name for d in found}))
            raise ManifestError(f"module {module!r} has no workflow {only!r} (it has: {names})")
        return chosen
    return found


def workflow_object(definition: WorkflowDefinition, options: ManifestOptions) -> dict[str, Any]:
    """The Workflow resource of one definition, checked against the CRD's model."""
    spec: dict[str, Any] = {
        "workflow": definition.name,
        "version": definition.version,
        "signature": definition.signature,
        "steps": list(definition.steps),
        "events": list(definition.events),
        "active": options.active,
    }
    if definition.timeout is not None:
        # Whole seconds, rounded up: the CRD field is an integer and must stay >= 1.
        spec["timeoutSeconds"] = math.ceil(definition.timeout.total_seconds())
    # An image means Pods: with the executor left to the operator's default (inline,
    # usually) the image would be silently ignored.
    executor = options.executor or ("pod" if options.image else None)
    if executor is not None:
        spec["executor"] = executor
    if options.image is not None:
        template: dict[str, Any] = {"image": options.image, "modules": [options.module]}
        if options.service_account is not None:
            template["serviceAccountName"] = options.service_account
        spec["template"] = template
    try:
        checked = WorkflowDefinitionSpec.model_validate(spec)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ManifestError(f"workflow {definition.name!r}: {problems}") from None
    metadata: dict[str, Any] = {"name": object_name(definition.name, definition.version)}
    if options.namespace is not None:
        metadata["namespace"] = options.namespace
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WorkflowDefinition",
        "metadata": metadata,
        "spec": checked.model_dump(mode="json", by_alias=True, exclude_unset=True),
    }


def render_manifests(options: ManifestOptions, only: str | None = None) -> str:
    """YAML documents, one Workflow per definition (``kubectl apply -f -`` takes them)."""
    if options.executor == "pod" and options.image is None:
        raise ManifestError("--executor pod needs --image: the segment Pods run that image")
    if options.service_account is not None and options.image is None:
        raise ManifestError("--service-account needs --image: it is the segment Pods' account")
    objects = [workflow_object(d, options) for d in load_definitions(options.module, only)]
    text: str = yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True, width=100)
    return text
