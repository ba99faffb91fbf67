"""`Catalog`: the `WorkflowDefinition` resources the operator has seen, and where runs execute.

A `WorkflowDefinition` object declares a workflow version as deployed code has it (name, version,
signature) and where its segments run: ``inline`` in the operator, or ``pod`` from its
pod template. The catalog answers, for a run, which executor takes it and with which
template — from the objects in the run's own namespace, so teams sharing an operator do
not run each other's images; runs of workflows no object declares go to the operator's
default executor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kflow.resources import PodTemplate, WorkflowDefinitionSpec

__all__ = ["Catalog", "Placement"]

Executor = Literal["inline", "pod"]


@dataclass(frozen=True)
class Placement:
    """Where a run's segments execute. ``problem`` says why they cannot (then nothing runs)."""

    executor: Executor
    template: PodTemplate | None = None
    problem: str | None = None


class Catalog:
    def __init__(self, default: Executor) -> None:
        self._default: Executor = default
        self._by_uid: dict[str, tuple[str, WorkflowDefinitionSpec]] = {}
        self._names: dict[str, str] = {}
        # Looked up on every submit and status write: by (namespace, workflow), not a scan.
        self._by_name: dict[tuple[str, str], dict[str, WorkflowDefinitionSpec]] = {}

    def put(
        self, uid: str, namespace: str, spec: WorkflowDefinitionSpec, *, name: str = ""
    ) -> None:
        self.remove(uid)  # the object may have been renamed to another workflow
        self._by_uid[uid] = (namespace, spec)
        self._names[uid] = name
        self._by_name.setdefault((namespace, spec.workflow), {})[uid] = spec

    def remove(self, uid: str) -> None:
        entry = self._by_uid.pop(uid, None)
        self._names.pop(uid, None)
        if entry is None:
            return
        namespace, spec = entry
        key = (namespace, spec.workflow)
        self._by_name[key].pop(uid, None)
        if not self._by_name[key]:
            del self._by_name[key]

    def find(
        self, namespace: str, workflow: str, version: int | None
    ) -> WorkflowDefinitionSpec | None:
        """The object declaring ``workflow`` at ``version`` in ``namespace``, or its highest
        active version there."""
        specs = self._by_name.get((namespace, workflow), {}).values()
        if version is not None:
            return next((s for s in specs if s.version == version), None)
        active = [s for s in specs if s.active]
        return max(active, key=lambda s: s.version) if active else None

    def objects(self, workflow: str, version: int) -> list[tuple[str, str, str]]:
        """The objects that declare ``workflow`` at ``version``, in every namespace seen:
        (uid, namespace, name) each."""
        return [
            (uid, namespace, self._names.get(uid, ""))
            for uid, (namespace, spec) in self._by_uid.items()
            if spec.workflow == workflow and spec.version == version
        ]

    def placement(self, namespace: str, workflow: str, version: int | None) -> Placement:
        spec = self.find(namespace, workflow, version)
        executor = (spec.executor if spec else None) or self._default
        if executor == "inline":
            return Placement("inline")
        if spec is None:
            at = f" v{version}" if version is not None else ""
            return Placement(
                "pod", problem=f"no Workflow resource declares {workflow!r}{at}: the pod "
                "executor takes the image and command from it",
            )  # fmt: skip
        if spec.template is None:
            return Placement(
                "pod", problem=f"Workflow {workflow!r} v{spec.version} runs in Pods but has "
                "no spec.template (image, command)",
            )  # fmt: skip
        return Placement("pod", spec.template)
