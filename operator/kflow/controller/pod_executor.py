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
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any

from kflow.controller.kube import KubeApi
from kflow.controller.mirror import RunRef
from kflow.controller.pod_manifest import (
    RUN_LABEL,
    PodEnd,
    pod_end,
    pod_problem,
    pod_started,
    segment_pod,
)
from kflow.controller.tasks import Background
from kflow.engine import Engine
from kflow.errors import ApiError, RunNotFound, TransientError
from kflow.models import SegmentOutcome
from kflow.resources import PodTemplate
from kflow.retry import backoff
from kflow.settings import OperatorSettings

__all__ = ["PodExecutor"]

log = logging.getLogger(__name__)

_LOST_NODE_MARGIN = timedelta(seconds=30)
"""How long past its deletion deadline a Pod may still look alive before it counts as gone."""

Placement = tuple[RunRef, PodTemplate] | str | None
"""Where a run's next Pod goes; a string says why it cannot go anywhere; None: run gone."""


class PodExecutor:
    def __init__(
        self,
        *,
        engine: Engine,
        kube: KubeApi,
        settings: OperatorSettings,
        placement: Callable[[uuid.UUID], Awaitable[Placement]],
        on_outcome: Callable[[SegmentOutcome], Awaitable[None]],
        on_problem: Callable[[uuid.UUID, str, str], Coroutine[Any, Any, None]],
        retry_at: Callable[[uuid.UUID, datetime], None],
    ) -> None:
        self._engine = engine
        self._kube = kube
        self._settings = settings
        self._placement = placement
        self._on_outcome = on_outcome
        self._on_problem = on_problem
        """Told (run, reason, message) of what goes wrong with its Pods."""
        self._retry_at = retry_at
        self._live: dict[uuid.UUID, str] = {}
        """The Pod running each run's segment ("" while it is being dispatched)."""
        self._namespaces: dict[uuid.UUID, str] = {}
        self._steal: set[uuid.UUID] = set()
        self._failures: dict[uuid.UUID, int] = {}
        self._killed: set[str] = set()
        self._cancelling: set[uuid.UUID] = set()
        self._ended: dict[str, PodEnd] = {}
        self._started: set[str] = set()
        self._problems: dict[str, str] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._background = Background("pod executor")

    @property
    def busy(self) -> int:
        return len(self._live)

    def running(self) -> list[uuid.UUID]:
        return list(self._live)

    def pod_of(self, run_id: uuid.UUID) -> str | None:
        """The Pod running the run's segment now, if any."""
        return self._live.get(run_id) or None

    def submit(self, run_id: uuid.UUID, *, steal: bool = False) -> None:
        """Advance the run soon. ``steal``: its lease may be held by a dead executor."""
        if steal:
            self._steal.add(run_id)
        if run_id in self._live:
            return  # what moved the run is in the store: the Pod's outcome will show it
        self._live[run_id] = ""
        self._background.spawn(self._dispatch(run_id))

    async def _dispatch(self, run_id: uuid.UUID) -> None:
        try:
            await self._dispatch_once(run_id)
        except Exception as exc:  # never leave the run marked as dispatching forever
            log.exception("run %s: dispatching a segment failed unexpectedly", run_id)
            if self._live.get(run_id) == "":
                del self._live[run_id]
            self._retry(run_id, f"unexpected {type(exc).__name__}")

    async def _dispatch_once(self, run_id: uuid.UUID) -> None:
        try:
            placed = await self._placement(run_id)
            if placed is None or isinstance(placed, str):
                del self._live[run_id]
                if isinstance(placed, str):
                    await self._on_problem(run_id, "NoPodTemplate", placed)
                    await self._give_up(run_id, placed, blocked=True)
                return
            ref, template = placed
            self._namespaces[run_id] = ref.namespace
            pods = await self._kube.list_pods(ref.namespace, f"{RUN_LABEL}={ref.uid}")
            alive = [p for p in pods if pod_end(p) is None and not _deleting(p)]
            if alive:
                name = alive[0]["metadata"]["name"]
                log.info("run %s: adopting its segment Pod %s", run_id, name)
                self._steal.discard(run_id)  # the next Pod follows this live one
                self._observe(alive[0])
            else:
                segment = await self._engine.store.next_dispatch(run_id)
                name = await self._create(run_id, ref, template, segment)
        except (TransientError, RunNotFound) as exc:
            self._live.pop(run_id, None)
            self._retry(run_id, f"cannot dispatch a segment: {exc}")
            return
        except (ApiError, OSError) as exc:
            self._live.pop(run_id, None)
            if isinstance(exc, ApiError) and exc.permanent:
                await self._failed(run_id, f"the segment Pod was refused: {exc}")
            else:
                self._retry(run_id, f"cannot dispatch a segment: {exc}")
            return
        if run_id not in self._live:  # forgotten meanwhile: its WorkflowRun is gone
            return
        self._live[run_id] = name
        if name in self._ended:  # it ended while we looked
            self._end(run_id, name, self._ended[name])
        elif name not in self._started:
            self._arm(f"{name}/start", self._settings.pod_start_timeout, self._not_started,
                      run_id, name)  # fmt: skip

    async def _create(
        self, run_id: uuid.UUID, ref: RunRef, template: PodTemplate, segment: int
    ) -> str:
        steal = run_id in self._steal
        self._steal.discard(run_id)
        assert self._settings.runner_dsn_secret is not None  # checked by the placement
        pod = segment_pod(
            ref, segment=segment, template=template, schema=self._settings.schema_name,
            dsn_secret=self._settings.runner_dsn_secret, dsn_key=self._settings.runner_dsn_key,
            steal=steal, service_account=self._settings.runner_service_account,
        )  # fmt: skip
        try:
            await self._kube.create_pod(pod)
        except ApiError as exc:
            if exc.status != 409:  # 409: ours, from an attempt whose answer was lost
                raise
        return str(pod["metadata"]["name"])

    # -- the Pod watch ----------------------------------------------------------------

    def pod_event(self, kind: str | None, pod: dict[str, Any]) -> None:
        """A watch event about a segment Pod (kopf's ``on.event``)."""
        meta = pod.get("metadata") or {}
        name = str(meta.get("name"))
        try:
            run_id = uuid.UUID(_labels(pod).get(RUN_LABEL, ""))
        except ValueError:
            return
        deleted = kind == "DELETED"
        end = pod_end(pod, deleted=deleted)
        live = self._live.get(run_id) == name
        if end is not None:
            if live:
                self._end(run_id, name, end)
            if deleted:
                self._forget_pod(name)
            else:
                self._ended[name] = end
                finished = _finished_at(pod) or self._engine.clock.now()
                self._arm(name, finished + self._settings.pod_ttl - self._engine.clock.now(),
                          self._delete, str(meta.get("namespace")), name)  # fmt: skip
            return
        self._observe(pod)  # also before its name is recorded: events may come first
        if meta.get("deletionTimestamp"):
            # A Pod on a lost node never reports its end: give it its grace period.
            gone_by = datetime.fromisoformat(str(meta["deletionTimestamp"]).replace("Z", "+00:00"))
            self._arm(f"{name}/gone", gone_by + _LOST_NODE_MARGIN - self._engine.clock.now(),
                      self._vanished, run_id, name)  # fmt: skip
        problem = pod_problem(pod)
        if live and problem is not None and problem != self._problems.get(name):
            self._problems[name] = problem  # reported once, while it lasts
            self._background.spawn(
                self._on_problem(run_id, "PodNotStarting", f"pod {name}: {problem}")
            )

    def _observe(self, pod: dict[str, Any]) -> None:
        name = str(pod["metadata"]["name"])
        if pod_started(pod):
            self._started.add(name)
            self._disarm(f"{name}/start")

    async def _vanished(self, run_id: uuid.UUID, name: str) -> None:
        if self._live.get(run_id) == name:
            self._end(
                run_id,
                name,
                PodEnd(
                    False,
                    "the Pod did not end within its grace "
                    "period after deletion (its node is lost?)",
                ),
            )

    def _forget_pod(self, name: str) -> None:
        self._disarm(name)
        self._disarm(f"{name}/start")
        self._disarm(f"{name}/gone")
        self._ended.pop(name, None)
        self._started.discard(name)
        self._killed.discard(name)
        self._problems.pop(name, None)

    def _end(self, run_id: uuid.UUID, name: str, end: PodEnd) -> None:
        del self._live[run_id]  # at once: the end is handled once
        self._disarm(f"{name}/start")
        self._disarm(f"{name}/gone")
        # A Pod that a cancel stopped (or that ended while the cancel took its lease)
        # did not fail: the run goes on to its compensations.
        stopped = name in self._killed or run_id in self._cancelling
        self._killed.discard(name)
        self._cancelling.discard(run_id)
        self._background.spawn(self._after(run_id, name, end, stopped=stopped))

    async def _after(self, run_id: uuid.UUID, name: str, end: PodEnd, *, stopped: bool) -> None:
        # An event or wake-up that came while the Pod ran is in the store: `outcome` sees it.
        if not end.ok and not stopped:
            await self._failed(run_id, f"pod {name}: {end.message}")
            return
        self._failures.pop(run_id, None)
        try:
            outcome = await self._engine.outcome(run_id)
        except RunNotFound:
            return
        except TransientError as exc:
            self._retry(run_id, f"cannot read the run after its segment: {exc}")
            return
        await self._on_outcome(outcome)

    async def _not_started(self, run_id: uuid.UUID, name: str) -> None:
        if self._live.get(run_id) != name or name in self._started:
            return
        problem = self._problems.get(name) or "still Pending"
        timeout = self._settings.pod_start_timeout.total_seconds()
        namespace = self._namespaces[run_id]
        self._end(run_id, name, PodEnd(False, f"did not start within {timeout:.0f}s: {problem}"))
        try:
            await self._kube.delete_pod(namespace, name, grace_seconds=0)
        except (ApiError, OSError) as exc:
            log.warning("could not delete Pod %s that did not start: %s", name, exc)

    # -- failures -----------------------------------------------------------------------

    async def _failed(self, run_id: uuid.UUID, message: str) -> None:
        """A segment failed outside the run's code: retry it with backoff, up to the limit."""
        failures = self._failures.get(run_id, 0) + 1
        limit = self._settings.segment_retries
        if failures > limit:
            self._failures.pop(run_id, None)
            await self._give_up(
                run_id, f"its segment failed {failures} times in a row; last: {message}"
            )
            return
        self._failures[run_id] = failures
        delay = backoff(failures)
        await self._on_problem(
            run_id, "SegmentFailed",
            f"{message}; retrying in {delay:.0f}s ({failures} of {limit} retries)",
        )  # fmt: skip
        self._steal.add(run_id)  # the failed runner may have died holding the lease
        self._retry_at(run_id, self._engine.clock.now() + timedelta(seconds=delay))

    async def _give_up(self, run_id: uuid.UUID, message: str, *, blocked: bool = False) -> None:
        try:
            outcome = await self._engine.fail(run_id, message, blocked=blocked)
        except RunNotFound:
            return
        except TransientError as exc:
            self._retry(run_id, f"cannot record that the run failed: {exc}")
            return
        await self._on_outcome(outcome)

    def _retry(self, run_id: uuid.UUID, why: str) -> None:
        """Something outside the run failed (store, API server): try again later."""
        log.warning("run %s: %s; trying again in 5s", run_id, why)
        self._retry_at(run_id, self._engine.clock.now() + timedelta(seconds=5))

    # -- cancel, cleanup ----------------------------------------------------------------

    def cancelling(self, run_id: uuid.UUID) -> None:
        """A cancel is about to take the run's lease: its running Pod's end (killed, or
        fenced out) is not a failure."""
        if self._live.get(run_id):
            self._cancelling.add(run_id)

    async def kill(self, run_id: uuid.UUID) -> None:
        """Stop the run's running segment Pod (with the grace period); the next segment is
        dispatched when it has ended."""
        name = self._live.get(run_id)
        if not name:
            self._cancelling.discard(run_id)
            return
        self._killed.add(name)
        grace = self._settings.pod_grace_seconds
        await self._kube.delete_pod(self._namespaces[run_id], name, grace_seconds=grace)

    async def _delete(self, namespace: str, name: str) -> None:
        """A finished Pod's time is up (``pod_ttl``)."""
        try:
            await self._kube.delete_pod(namespace, name, grace_seconds=None)
        except (ApiError, OSError) as exc:
            log.warning("could not delete finished Pod %s/%s (again in 60s): %s",
                        namespace, name, exc)  # fmt: skip
            self._arm(name, timedelta(seconds=60), self._delete, namespace, name)

    def forget(self, run_id: uuid.UUID) -> None:
        """The run's WorkflowRun is gone (its Pods go with it, by owner reference)."""
        for state in (self._steal, self._cancelling):
            state.discard(run_id)
        self._failures.pop(run_id, None)
        self._namespaces.pop(run_id, None)
        self._live.pop(run_id, None)

    def _arm(
        self, key: str, delay: timedelta, call: Callable[..., Coroutine[Any, Any, None]],
        *args: Any,
    ) -> None:  # fmt: skip
        """One timer per key (a Pod's start deadline, its cleanup), replacing the last."""
        self._disarm(key)
        loop = asyncio.get_running_loop()
        seconds = max(delay.total_seconds(), 0.0)
        self._timers[key] = loop.call_later(seconds, lambda: self._background.spawn(call(*args)))

    def _disarm(self, key: str) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    async def drain(self) -> None:
        """Wait for the dispatches in flight (for shutdown); the Pods run on."""
        await self._background.drain()
        for timer in self._timers.values():
            timer.cancel()


def _labels(pod: dict[str, Any]) -> dict[str, str]:
    return dict((pod.get("metadata") or {}).get("labels") or {})


def _deleting(pod: dict[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def _finished_at(pod: dict[str, Any]) -> datetime | None:
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        ended = (container.get("state") or {}).get("terminated") or {}
        if ended.get("finishedAt"):
            return datetime.fromisoformat(str(ended["finishedAt"]).replace("Z", "+00:00"))
    return None
