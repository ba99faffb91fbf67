"""Wiring: settings -> store, registry, engine, controller -> kopf. Nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

import kopf

from kflow._clock import SystemClock
from kflow._engine import RUNNING_AFTER, Engine
from kflow._store import Store
from kflow._store.progress import ProgressListener
from kflow._workflow import Registry
from kflow.controller.controller import Controller
from kflow.controller.handlers import FINALIZER, build_registry
from kflow.controller.kube import KubeApi
from kflow.controller.pod_manifest import RUN_LABEL
from kflow.controller.webhook import webhook_server
from kflow.settings import OperatorSettings

__all__ = ["run_operator"]

log = logging.getLogger("kflow.operator")

Flag = asyncio.Event | threading.Event | asyncio.Future[Any]


async def run_operator(
    settings: OperatorSettings, *, stop_flag: Flag | None = None, ready_flag: Flag | None = None
) -> None:
    """Run the operator until ``stop_flag`` is set (or the process is signalled)."""
    registry = Registry.from_modules(settings.workflow_modules)
    store = await Store.open(
        settings.database_dsn(),
        schema=settings.schema_name,
        timeout=settings.db_timeout.total_seconds(),
    )
    kube = KubeApi.from_environment()
    clock = SystemClock()
    engine = Engine(
        store, registry, clock=clock, lease_ttl=settings.lease_ttl,
        record_running_after=RUNNING_AFTER,
    )  # fmt: skip
    # The controller subscribes to the engine's records: wiring goes one way.
    controller = Controller(engine=engine, kube=kube, settings=settings, clock=clock)
    conflicts = await engine.register_definitions()  # not overwritten: reported
    await controller.workflows.load()
    await controller.workflows.report_conflicts(conflicts)
    if settings.metrics_port:
        controller.metrics.serve(settings.metrics_port)
    log.info(
        "kflow operator: %d workflow(s) from %s, namespaces %s",
        len(registry.workflows()), settings.workflow_modules, settings.namespaces or "all",
    )  # fmt: skip

    kopf_settings = kopf.OperatorSettings()
    kopf_settings.posting.enabled = False  # kflow posts its own Events, on phase changes
    kopf_settings.persistence.finalizer = FINALIZER
    kopf_settings.persistence.diffbase_storage = _NoDiffBase()
    # Only segment Pods, filtered by the API server (kopf's own filter is client-side).
    kopf_settings.watching.label_selectors["v1", "pods"] = RUN_LABEL
    if settings.webhook_port:
        kopf_settings.admission.server = webhook_server(settings)
        if settings.webhook_name:
            kopf_settings.admission.managed = settings.webhook_name
    listener = ProgressListener(
        settings.database_dsn(), settings.schema_name, timeout=settings.db_timeout.total_seconds(),
        on_progress=controller.progress, on_reconnect=controller.progress_reconnected,
    )  # fmt: skip
    background = [
        asyncio.create_task(controller.run(), name="kflow-timers"),
        asyncio.create_task(listener.run(), name="kflow-progress"),
    ]
    for task in background:  # they run until cancelled: an end is a bug to see at once
        task.add_done_callback(_report_end)
    try:
        await kopf.operator(
            registry=build_registry(admission=bool(settings.webhook_port)),
            settings=kopf_settings,
            memo=kopf.Memo(controller=controller),
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # reported already
                await task
        await controller.inline.drain()
        await controller.pods.drain()
        await engine.close()
        await kube.close()
        await store.close()


def _report_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed", task.get_name(), exc_info=task.exception())


class _NoDiffBase(kopf.DiffBaseStorage):
    """kflow has no create or update handlers (runs are adopted from the watch stream),
    so it needs no record of each object's last handled spec: without one, kopf skips the
    annotation it would PATCH onto every WorkflowRun (one write and one watch event each)."""

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass
