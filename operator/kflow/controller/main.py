"""Wiring: settings -> store, registry, engine, controller -> kopf, in this replica's role.

Without leader election the operator leads at once. With it (``KFLOW_LEADER_ELECTION``)
it is a standby until it holds the Lease (`kflow.controller.leader`): it writes nothing,
and serves the validating webhook (if on) from a kopf operator with the admission
handlers only, which watches nothing. Once leading it stops that kopf and runs the full
operator for as long as it holds the Lease. The health endpoints
(`kflow.controller.health`) answer in both roles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
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
from kflow.controller.health import Health
from kflow.controller.kube import KubeApi
from kflow.controller.kube_lease import KubeLease
from kflow.controller.leader import Campaign, LeaderElector, Timing, campaign, identity
from kflow.controller.pod_manifest import RUN_LABEL
from kflow.controller.webhook import webhook_server
from kflow.settings import OperatorSettings

__all__ = ["run_operator"]

log = logging.getLogger("kflow.operator")


async def run_operator(
    settings: OperatorSettings,
    *,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
) -> None:
    """Run the operator until ``stop_flag`` is set or the process gets SIGTERM/SIGINT;
    ``ready_flag`` is set once it leads and kopf has started."""
    stopping = stop_flag or asyncio.Event()
    _on_signals(stopping)
    async with contextlib.AsyncExitStack() as stack:
        health = Health(settings.health_port)  # first: alive while the rest starts
        await health.start()
        stack.push_async_callback(health.stop)
        registry = Registry.from_modules(settings.workflow_modules)
        store = await Store.open(
            settings.database_dsn(),
            schema=settings.schema_name,
            timeout=settings.db_timeout.total_seconds(),
        )
        stack.push_async_callback(store.close)
        health.readiness = store.ping
        kube = KubeApi.from_environment()
        stack.push_async_callback(kube.close)
        clock = SystemClock()
        engine = Engine(
            store, registry, clock=clock, lease_ttl=settings.lease_ttl,
            record_running_after=RUNNING_AFTER,
        )  # fmt: skip
        stack.push_async_callback(engine.close)
        # The controller subscribes to the engine's records: wiring goes one way.
        controller = Controller(engine=engine, kube=kube, settings=settings, clock=clock)
        if settings.metrics_port:
            controller.metrics.serve(settings.metrics_port)
        log.info(
            "kflow operator: %d workflow(s) from %s, namespaces %s",
            len(registry.workflows()), settings.workflow_modules, settings.namespaces or "all",
        )  # fmt: skip
        if not settings.leader_election:
            await _lead(settings, controller, health, stopping, ready_flag)
            return
        assert settings.leader_namespace is not None  # the settings' validator says so
        elector = LeaderElector(
            KubeLease(kube, settings.leader_namespace, settings.leader_lease),
            identity=identity(settings.pod_name), timing=Timing.from_settings(settings),
        )  # fmt: skip
        async with campaign(elector) as election:  # before any kopf starts (see `campaign`)
            if await _standby(settings, controller, health, election, stopping):
                await _lead(settings, controller, health, stopping, ready_flag)


async def _standby(
    settings: OperatorSettings, controller: Controller, health: Health,
    election: Campaign, stopping: asyncio.Event,
) -> bool:  # fmt: skip
    """Wait for the Lease, serving the webhook meanwhile: True once leading, False if
    stopped first."""
    log.info("standby: waiting for the Lease %s/%s", settings.leader_namespace,
             settings.leader_lease)  # fmt: skip
    _serving(health, controller, "standby", None)
    ends: set[asyncio.Task[Any]] = {
        asyncio.create_task(election.won.wait()),
        asyncio.create_task(stopping.wait()),
    }
    looked = asyncio.create_task(election.looked.wait())
    await asyncio.wait({looked, *ends}, return_when=asyncio.FIRST_COMPLETED)
    over = asyncio.Event()
    admission = None
    # Not when the Lease was free at the first look: a kopf stopped while it starts up
    # takes seconds to (its requests in flight retry).
    if settings.webhook_port and not (election.won.is_set() or stopping.is_set()):
        admission = asyncio.create_task(
            _kopf(settings, controller, watching=False, stop=over, stopping=stopping),
            name="kflow-kopf-admission",
        )
        _serving(health, controller, "standby", admission)
        ends.add(admission)
    await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
    for task in (looked, *ends):
        if task is not admission:
            task.cancel()
    if admission is not None:
        over.set()
        await admission  # its failure is the process's
    return election.won.is_set() and not stopping.is_set()


async def _lead(
    settings: OperatorSettings, controller: Controller, health: Health,
    stopping: asyncio.Event, ready_flag: asyncio.Event | None,
) -> None:  # fmt: skip
    """The active operator: definitions, Workflow objects, timers, progress, kopf."""
    conflicts = await controller.engine.register_definitions()  # not overwritten: reported
    await controller.workflows.load()
    await controller.workflows.report_conflicts(conflicts)
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
    # Ended as soon as the operator stops, not after kopf: kopf's shutdown waits (up to
    # 5 s) for the tasks started after it, which their timed waits are.
    ender = asyncio.create_task(_cancel_when(stopping, background), name="kflow-stopping")
    operator = asyncio.create_task(
        _kopf(settings, controller, watching=True, stop=stopping, stopping=stopping,
              ready=ready_flag),
        name="kflow-kopf",
    )  # fmt: skip
    _serving(health, controller, "leader", operator)
    try:
        await operator
    finally:
        ender.cancel()
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # reported already
                await task
        await controller.inline.drain()
        await controller.pods.drain()


async def _kopf(
    settings: OperatorSettings, controller: Controller, *, watching: bool,
    stop: asyncio.Event, stopping: asyncio.Event, ready: asyncio.Event | None = None,
) -> None:  # fmt: skip
    """kopf with every handler (``watching``), or a standby's: the webhook's only. It
    stops when ``stop`` is set; signals set ``stopping``."""
    kopf_settings = kopf.OperatorSettings()
    kopf_settings.posting.enabled = False  # kflow posts its own Events, on phase changes
    kopf_settings.persistence.finalizer = FINALIZER
    kopf_settings.persistence.diffbase_storage = _NoDiffBase()
    # Watching listed namespaces needs no cluster-wide scan of namespaces and CRDs, which a
    # namespaced operator's RBAC forbids: kopf retried it ~55 s before it began. The CRDs
    # are there by now (the WorkflowDefinition listing before kopf starts found them).
    kopf_settings.scanning.disabled = bool(settings.namespaces)
    # Only segment Pods, filtered by the API server (kopf's own filter is client-side).
    kopf_settings.watching.label_selectors["v1", "pods"] = RUN_LABEL
    if settings.webhook_port:
        kopf_settings.admission.server = webhook_server(settings)
        if settings.webhook_name and watching:  # a cluster write: the leader's
            kopf_settings.admission.managed = settings.webhook_name
    started = asyncio.Event()
    ours = asyncio.create_task(_signals_after(started, stopping, ready), name="kflow-signals")
    try:
        await kopf.operator(
            registry=build_registry(admission=bool(settings.webhook_port), watching=watching),
            settings=kopf_settings,
            memo=kopf.Memo(controller=controller),
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            stop_flag=stop,
            ready_flag=started,
        )
    finally:
        ours.cancel()


async def _signals_after(
    started: asyncio.Event, stopping: asyncio.Event, ready: asyncio.Event | None
) -> None:
    """Once kopf has started, and installed its own signal handlers, put kflow's back: a
    signal must set ``stopping`` (kflow's flag, which stops kopf too), or kopf's shutdown
    waits 5 s for the task it left waiting on its stop flag, and kflow never hears of it."""
    await started.wait()
    await asyncio.sleep(0)  # kopf installs its handlers in the same loop turn, before this
    _on_signals(stopping)
    if ready is not None:
        ready.set()


async def _cancel_when(flag: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    await flag.wait()
    for task in tasks:
        task.cancel()


def _serving(health: Health, controller: Controller, role: str, kopf: asyncio.Task[None] | None
             ) -> None:  # fmt: skip
    health.serving(role, kopf)
    controller.metrics.leader.set(1 if role == "leader" else 0)


def _on_signals(stopping: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stopping`` (kopf installs its own while it runs)."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may; the caller stops us by its flag
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)


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
