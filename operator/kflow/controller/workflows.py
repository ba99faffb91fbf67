"""`WorkflowObjects`: the `WorkflowDefinition` resources, as the controller sees them.

Each object tells the catalog where its version's runs execute (inline, or from its pod
template); runs blocked for want of one, or of its code, are tried again when it appears;
and a version PostgreSQL records with another contract than this code's is reported on
its objects (`Engine.register_definitions` returned it; its runs block).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping

from kflow._models import DefinitionConflict, RunStatus
from kflow.controller.bodies import Invalid, WorkflowObject, workflow_object
from kflow.controller.catalog import Catalog
from kflow.controller.kube import KubeApi
from kflow.controller.metrics import Metrics
from kflow.controller.pod_states import PodState
from kflow.controller.runs import TrackedRun

__all__ = ["WorkflowObjects"]

log = logging.getLogger(__name__)


class WorkflowObjects:
    def __init__(
        self,
        *,
        catalog: Catalog,
        kube: KubeApi,
        metrics: Metrics,
        namespaces: list[str],
        runs: Mapping[uuid.UUID, TrackedRun],
        submit: Callable[[uuid.UUID], None],
    ) -> None:
        self._catalog = catalog
        self._kube = kube
        self._metrics = metrics
        self._namespaces = namespaces
        self._runs = runs
        self._submit = submit

    async def load(self) -> None:
        """Read the `WorkflowDefinition` objects before any run is adopted: a run must not start
        inline for want of the object that sends it to a Pod."""
        for body in await self._kube.list_workflows(self._namespaces):
            await self.seen(workflow_object(body))

    async def seen(self, seen: WorkflowObject) -> None:
        """A `WorkflowDefinition` resource was created or changed. Runs that were blocked
        for want of it, or of its code, are tried again. One that does not validate (what
        the CRD's schema cannot check) is ignored, and says why: a log line and a Warning
        Event ``InvalidDefinition`` on it, naming the field."""
        if isinstance(seen.spec, Invalid):
            message = f"ignored: {seen.spec.message}"
            log.error("WorkflowDefinition %s/%s %s", seen.namespace, seen.name, message)
            self._catalog.remove(seen.uid)
            await self._warn(seen.namespace, seen.name, seen.uid, "InvalidDefinition", message)
            return
        self._catalog.put(seen.uid, seen.namespace, seen.spec, name=seen.name)
        for record in list(self._runs.values()):
            if record.phase is None or record.ref.namespace != seen.namespace:
                continue
            if record.workflow != seen.spec.workflow:
                continue
            if record.phase.is_blocked or (
                record.phase == RunStatus.COMPENSATING and record.pod.state is PodState.IDLE
            ):
                self._submit(record.run_id)

    async def report_conflicts(self, conflicts: list[DefinitionConflict]) -> None:
        """Report the workflow versions PostgreSQL records with another signature than
        this code's (`Engine.register_definitions`; their runs block): an ERROR log line,
        the ``kflow_definition_conflicts`` gauge, and a Warning Event on each `WorkflowDefinition`
        object of that name and version (read by `load`)."""
        for conflict in conflicts:
            log.error("definition conflict: %s (recorded %s, code %s)",
                      conflict.message, conflict.stored, conflict.code)  # fmt: skip
            labels = (conflict.name, str(conflict.version))
            self._metrics.definition_conflicts.labels(*labels).set(1)
            message = f"{conflict.message} (recorded {conflict.stored}, code {conflict.code})"
            for uid, namespace, name in self._catalog.objects(conflict.name, conflict.version):
                await self._warn(namespace, name, uid, "DefinitionConflict", message)

    async def _warn(self, namespace: str, name: str, uid: str, reason: str, message: str) -> None:
        try:
            await self._kube.post_event(
                namespace=namespace, name=name, uid=uid, type="Warning",
                reason=reason, message=message, kind="WorkflowDefinition",
            )  # fmt: skip
        except Exception as exc:  # an Event is a courtesy, as on runs
            log.warning("could not post %s on %s/%s: %s", reason, namespace, name, exc)

    def deleted(self, uid: str) -> None:
        self._catalog.remove(uid)
