"""`PodExecutor`: runs each segment of a run in a Pod of its own (``kflow runner``).

One Pod at a time per run. Dispatching a segment first lists the run's Pods: a live one
(created before an operator restart) is adopted, otherwise the next one is created, named
after the run and a dispatch number counted in PostgreSQL (so a name is never reused,
even once its Pod is deleted). The Pod's end, seen through the Pod watch, decides what
follows:

- it succeeded: the runner recorded the segment, so the run's state is read from
  PostgreSQL and handled like an inline segment's outcome;
- it failed (non-zero exit, OOM kill, eviction, deletion, never started within the start
  timeout): the failure is reported on the run and the segment is retried with backoff —
  the next runner steals the lease, fencing out any zombie — until ``segment_retries``
  failures in a row, when the run is marked Failed (``kflow.io/retry`` resumes it);
- it was killed on purpose (cancel): the next segment is dispatched at once.

Finished Pods are deleted ``pod_ttl`` after they end, so their logs stay reachable until then.

The executor's state of a run is the run's `PodSlot` (`kflow.controller.pod_states`: idle,
dispatching, running a Pod, stopping it), on the run's record with the Pod's start
deadline and lost-node timers. What is known of each *Pod* (an end seen before its name
was recorded, whether it started, the problem reported, its deletion timer) is kept
here by Pod name: watch events may come before the run records the Pod, and a finished
Pod outlives its run's next segment.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kflow._engine import Engine
from kflow._errors import ApiError, RunNotFound, TransientError
from kflow._models import SegmentOutcome
from kflow._retry import backoff
from kflow.controller.catalog import Catalog
from kflow.controller.kube import KubeApi
from kflow.controller.pod_manifest import (
    RUN_LABEL,
    PodEnd,
    PodView,
    pod_name,
    read_pod,
    segment_pod,
)
from kflow.controller.pod_placement import PodTarget, Unplaceable, place
from kflow.controller.pod_states import PodEvent, PodState
from kflow.controller.runs import RETRY_AFTER, Purpose, TimerKey, TrackedRun
from kflow.controller.tasks import Background
from kflow.settings import OperatorSettings

__all__ = ["PodExecutor"]

log = logging.getLogger(__name__)

_LOST_NODE_MARGIN = timedelta(seconds=30)
"""How long past its deletion deadline a Pod may still look alive before it counts as gone."""


@dataclass
class _PodFacts:
    """What is known of one segment Pod."""

    end: PodEnd | None = None
    """How it ended, once seen (perhaps before its run recorded its name)."""
    started: bool = False
    problem: str | None = None
    """The problem reported while it did not start (reported once, while it lasts)."""
    cleanup: asyncio.TimerHandle | None = None
    """Its deletion, ``pod_ttl`` after it ended."""


class PodExecutor:
    def __init__(
        self,
        *,
        engine: Engine,
        kube: KubeApi,
        settings: OperatorSettings,
        runs: Mapping[uuid.UUID, TrackedRun],
        catalog: Catalog,
        on_outcome: Callable[[SegmentOutcome], Awaitable[None]],
        on_problem: Callable[[uuid.UUID, str, str], Coroutine[Any, Any, None]],
        on_placed: Callable[[uuid.UUID], None],
        retry_at: Callable[[uuid.UUID, datetime], None],
    ) -> None:
        self._engine = engine
        self._kube = kube
        self._settings = settings
        self._runs = runs
        """The controller's records: a run missing from it (or replaced) is forgotten."""
        self._catalog = catalog
        self._on_outcome = on_outcome
        self._on_problem = on_problem
        """Told (run, reason, message) of what goes wrong with its Pods."""
        self._on_placed = on_placed
        """Told of each run's segment Pod as it is made or adopted (its status shows it):
        a short segment may record nothing while its Pod is the run's."""
        self._retry_at = retry_at
        self._pods: dict[str, _PodFacts] = {}
        self._background = Background("pod executor")

    def running(self) -> list[uuid.UUID]:
        """The runs with a Pod being made or running."""
        return [run.run_id for run in self._runs.values() if run.pod.state is not PodState.IDLE]

    def submit(self, run: TrackedRun, *, steal: bool = False) -> None:
        """Advance the run soon. ``steal``: its lease may be held by a dead executor."""
        if steal:
            run.steal = True
        if run.pod.state is not PodState.IDLE:
            return  # what moved the run is in the store: the Pod's outcome will show it
        run.pod = run.pod.step(PodEvent.DISPATCH)
        self._background.spawn(self._dispatch(run))

    def _current(self, run: TrackedRun) -> bool:
        return self._runs.get(run.run_id) is run

    async def _dispatch(self, run: TrackedRun) -> None:
        try:
            await self._dispatch_once(run)
        except Exception as exc:  # never leave the run marked as dispatching forever
            log.exception("run %s: dispatching a segment failed unexpectedly", run.run_id)
            self._abandon(run)
            self._retry(run, f"unexpected {type(exc).__name__}")

    async def _dispatch_once(self, run: TrackedRun) -> None:
        try:
            placed = await self._place(run)
            if isinstance(placed, Unplaceable):
                self._abandon(run)
                await self._on_problem(run.run_id, "NoPodTemplate", placed.reason)
                await self._give_up(run, placed.reason, blocked=True)
                return
            name = await self._pod_for(run, placed) if placed is not None else None
        except (TransientError, RunNotFound) as exc:
            self._abandon(run)
            self._retry(run, f"cannot dispatch a segment: {exc}")
            return
        except (ApiError, OSError) as exc:
            self._abandon(run)
            if isinstance(exc, ApiError) and exc.permanent:
                await self._failed(run, f"the segment Pod was refused: {exc}")
            else:
                self._retry(run, f"cannot dispatch a segment: {exc}")
            return
        if name is None:  # nothing to run: the run is gone
            run.pod = run.pod.step(PodEvent.ABANDONED)
            return
        if not self._current(run):  # forgotten meanwhile: its WorkflowRun is gone
            return
        run.pod = run.pod.step(PodEvent.PLACED, name)
        self._on_placed(run.run_id)
        facts = self._pods.get(name)
        if facts is not None and facts.end is not None:  # it ended while we looked
            self._end(run, name, facts.end)
        elif facts is None or not facts.started:
            self._arm(run, TimerKey(Purpose.POD_START, name), self._settings.pod_start_timeout,
                      lambda: self._not_started(run, name))  # fmt: skip

    @staticmethod
    def _abandon(run: TrackedRun) -> None:
        """This dispatch ends without a Pod (once: the error after a refusal's report
        finds it abandoned already)."""
        if run.pod.state is PodState.DISPATCHING:
            run.pod = run.pod.step(PodEvent.ABANDONED)

    async def _pod_for(self, run: TrackedRun, placed: PodTarget) -> str:
        """The run's live Pod (made before an operator restart), or a new one: its name."""
        ref = placed.ref
        listed = await self._kube.list_pods(ref.namespace, f"{RUN_LABEL}={ref.uid}")
        alive = [p for p in map(read_pod, listed) if p.end is None and not p.deleting_by]
        if alive:
            log.info("run %s: adopting its segment Pod %s", run.run_id, alive[0].name)
            run.steal = False  # the next Pod follows this live one
            self._observe(alive[0])
            return alive[0].name
        segment = await self._engine.store.next_dispatch(run.run_id)
        return await self._create(run, placed, segment)

    async def _place(self, run: TrackedRun) -> PodTarget | Unplaceable | None:
        if not self._current(run):  # forgotten: its WorkflowRun is gone
            return None
        secret = self._settings.runner_dsn_secret
        return await place(run, engine=self._engine, catalog=self._catalog, dsn_secret=secret)

    async def _create(self, run: TrackedRun, placed: PodTarget, segment: int) -> str:
        steal, run.steal = run.steal, False
        assert self._settings.runner_dsn_secret is not None  # checked by the placement
        pod = segment_pod(
            placed.ref, segment=segment, template=placed.template,
            schema=self._settings.schema_name, dsn_secret=self._settings.runner_dsn_secret,
            dsn_key=self._settings.runner_dsn_key, steal=steal,
            service_account=self._settings.runner_service_account,
            image_pull_secrets=self._settings.runner_image_pull_secrets,
        )  # fmt: skip
        try:
            await self._kube.create_pod(pod)
        except ApiError as exc:
            if exc.status != 409:  # 409: ours, from an attempt whose answer was lost
                raise
        return pod_name(placed.ref, segment)

    # -- the Pod watch ----------------------------------------------------------------

    def pod_event(self, pod: PodView) -> None:
        """A watch event about a segment Pod (kopf's ``on.event``)."""
        if pod.run_id is None:
            return
        run = self._runs.get(pod.run_id)
        live = run is not None and run.pod.pod == pod.name
        if pod.end is not None:
            if live and run is not None:
                self._end(run, pod.name, pod.end)
            if pod.deleted:
                self._forget_pod(pod.name, run)
            else:
                facts = self._pods.setdefault(pod.name, _PodFacts())
                facts.end = pod.end
                now = self._engine.clock.now()
                finished = pod.finished_at or now
                self._arm_cleanup(pod.namespace, pod.name, finished + self._settings.pod_ttl - now)
            return
        self._observe(pod)  # also before its name is recorded: events may come first
        if run is None:
            return
        if pod.deleting_by is not None:
            # A Pod on a lost node never reports its end: give it its grace period.
            self._arm(run, TimerKey(Purpose.POD_GONE, pod.name),
                      pod.deleting_by + _LOST_NODE_MARGIN - self._engine.clock.now(),
                      lambda: self._vanished(run, pod.name))  # fmt: skip
        known = self._pods.get(pod.name)
        reported = known.problem if known is not None else None
        if live and pod.problem is not None and pod.problem != reported:
            self._pods.setdefault(pod.name, _PodFacts()).problem = pod.problem  # reported once
            self._background.spawn(
                self._on_problem(run.run_id, "PodNotStarting", f"pod {pod.name}: {pod.problem}")
            )

    def _observe(self, pod: PodView) -> None:
        if not pod.started:
            return
        self._pods.setdefault(pod.name, _PodFacts()).started = True
        run = self._runs.get(pod.run_id) if pod.run_id is not None else None
        if run is not None:
            run.disarm(TimerKey(Purpose.POD_START, pod.name))

    async def _vanished(self, run: TrackedRun, name: str) -> None:
        # Current: the timer may have fired in the loop turn that forgot the run.
        if self._current(run) and run.pod.pod == name:
            self._end(
                run,
                name,
                PodEnd(
                    False,
                    "the Pod did not end within its grace "
                    "period after deletion (its node is lost?)",
                ),
            )

    def _forget_pod(self, name: str, run: TrackedRun | None) -> None:
        facts = self._pods.pop(name, None)
        if facts is not None and facts.cleanup is not None:
            facts.cleanup.cancel()
        if run is not None:
            run.disarm_pod(name)

    def _end(self, run: TrackedRun, name: str, end: PodEnd) -> None:
        # A Pod that a cancel stopped (or that ended while the cancel took its lease)
        # did not fail: the run goes on to its compensations.
        stopped = run.pod.state is PodState.STOPPING
        run.pod = run.pod.step(PodEvent.ENDED)  # at once: the end is handled once
        run.disarm_pod(name)
        self._background.spawn(self._after(run, name, end, stopped=stopped))

    async def _after(self, run: TrackedRun, name: str, end: PodEnd, *, stopped: bool) -> None:
        # An event or wake-up that came while the Pod ran is in the store: `outcome` sees it.
        if not end.ok and not stopped:
            await self._failed(run, f"pod {name}: {end.message}")
            return
        run.pod_failures = 0
        try:
            outcome = await self._engine.outcome(run.run_id)
        except RunNotFound:
            return
        except TransientError as exc:
            self._retry(run, f"cannot read the run after its segment: {exc}")
            return
        await self._on_outcome(outcome)

    async def _not_started(self, run: TrackedRun, name: str) -> None:
        facts = self._pods.get(name) or _PodFacts()
        if not self._current(run) or run.pod.pod != name or facts.started:
            return  # forgotten (the timer fired as it was), moved on, or started
        problem = facts.problem or "still Pending"
        timeout = self._settings.pod_start_timeout.total_seconds()
        self._end(run, name, PodEnd(False, f"did not start within {timeout:.0f}s: {problem}"))
        try:
            await self._kube.delete_pod(run.ref.namespace, name, grace_seconds=0)
        except (ApiError, OSError) as exc:
            log.warning("could not delete Pod %s that did not start: %s", name, exc)

    # -- failures -----------------------------------------------------------------------

    async def _failed(self, run: TrackedRun, message: str) -> None:
        """A segment failed outside the run's code: retry it with backoff, up to the limit."""
        failures = run.pod_failures + 1
        limit = self._settings.segment_retries
        if failures > limit:
            run.pod_failures = 0
            await self._give_up(
                run, f"its segment failed {failures} times in a row; last: {message}"
            )
            return
        run.pod_failures = failures
        delay = backoff(failures)
        await self._on_problem(
            run.run_id, "SegmentFailed",
            f"{message}; retrying in {delay:.0f}s ({failures} of {limit} retries)",
        )  # fmt: skip
        run.steal = True  # the failed runner may have died holding the lease
        self._retry_at(run.run_id, self._engine.clock.now() + timedelta(seconds=delay))

    async def _give_up(self, run: TrackedRun, message: str, *, blocked: bool = False) -> None:
        try:
            outcome = await self._engine.fail(run.run_id, message, blocked=blocked)
        except RunNotFound:
            return
        except TransientError as exc:
            self._retry(run, f"cannot record that the run failed: {exc}")
            return
        await self._on_outcome(outcome)

    def _retry(self, run: TrackedRun, why: str) -> None:
        """Something outside the run failed (store, API server): try again later."""
        log.warning("run %s: %s; trying again in %.0fs", run.run_id, why, RETRY_AFTER)
        self._retry_at(run.run_id, self._engine.clock.now() + timedelta(seconds=RETRY_AFTER))

    # -- cancel, cleanup ----------------------------------------------------------------

    def cancelling(self, run: TrackedRun) -> None:
        """A cancel is about to take the run's lease: its running Pod's end (killed, or
        fenced out) is not a failure."""
        if run.pod.live:
            run.pod = run.pod.step(PodEvent.CANCEL)

    async def kill(self, run: TrackedRun) -> None:
        """Stop the run's running segment Pod (with the grace period); the next segment is
        dispatched when it has ended."""
        name = run.pod.pod
        if name is None:
            return
        run.pod = run.pod.step(PodEvent.CANCEL)
        grace = self._settings.pod_grace_seconds
        await self._kube.delete_pod(run.ref.namespace, name, grace_seconds=grace)

    async def _delete(self, namespace: str, name: str) -> None:
        """A finished Pod's time is up (``pod_ttl``)."""
        try:
            await self._kube.delete_pod(namespace, name, grace_seconds=None)
        except (ApiError, OSError) as exc:
            log.warning("could not delete finished Pod %s/%s (again in 60s): %s",
                        namespace, name, exc)  # fmt: skip
            self._arm_cleanup(namespace, name, timedelta(seconds=60))

    def _arm(
        self, run: TrackedRun, key: TimerKey, delay: timedelta,
        work: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:  # fmt: skip
        """One timer per key on the run's record (replacing the last), running ``work``."""
        run.arm(key, delay.total_seconds(), lambda: self._background.spawn(work()))

    def _arm_cleanup(self, namespace: str, name: str, delay: timedelta) -> None:
        facts = self._pods.setdefault(name, _PodFacts())
        if facts.cleanup is not None:
            facts.cleanup.cancel()
        loop = asyncio.get_running_loop()
        facts.cleanup = loop.call_later(
            max(delay.total_seconds(), 0.0),
            lambda: self._background.spawn(self._delete(namespace, name)),
        )

    async def drain(self) -> None:
        """Wait for the dispatches in flight (for shutdown); the Pods run on."""
        await self._background.drain()
        for facts in self._pods.values():
            if facts.cleanup is not None:
                facts.cleanup.cancel()
        for run in self._runs.values():
            for key in [k for k in run.timers if k.pod is not None]:
                run.disarm(key)
