"""The pod executor's decisions (pure logic): stand-ins for the API server and the engine
record what it asks of them; the real Pods are tested end to end (tests/e2e/test_pods.py)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from kflow._models import RunStatus, SegmentOutcome
from kflow.controller.catalog import Placement
from kflow.controller.pod_executor import PodExecutor
from kflow.controller.pod_manifest import RUN_LABEL, read_pod
from kflow.controller.pod_states import PodState
from kflow.controller.runs import RunRef, TrackedRun
from kflow.resources import PodTemplate


class _Engine:
    def __init__(self) -> None:
        self.clock = SimpleNamespace(now=lambda: datetime.now(UTC))
        self.store = self
        self.dispatches = 0
        self.failed: list[str] = []

    async def next_dispatch(self, run_id: uuid.UUID) -> int:
        self.dispatches += 1
        return self.dispatches

    async def get_run(self, run_id: uuid.UUID) -> Any:
        return SimpleNamespace(workflow_name="w", workflow_version=1)

    async def fail(self, run_id: uuid.UUID, error: str, *, blocked: bool = False) -> Any:
        self.failed.append(error)
        return SegmentOutcome(run_id=run_id, status=RunStatus.FAILED, error=error)


class _Kube:
    def __init__(self) -> None:
        self.created: list[str] = []
        self.deleted: list[str] = []

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return []

    async def create_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        self.created.append(pod["metadata"]["name"])
        return pod

    async def delete_pod(self, namespace: str, name: str, *, grace_seconds: int | None) -> None:
        self.deleted.append(name)


class _Catalog:
    def placement(self, namespace: str, workflow: str, version: int | None) -> Placement:
        return Placement("pod", template=PodTemplate.model_validate({"image": "team/app:1"}))


SETTINGS = SimpleNamespace(
    pod_start_timeout=timedelta(seconds=0.05), pod_ttl=timedelta(hours=1), segment_retries=3,
    schema_name="kflow", runner_dsn_secret="kflow-dsn", runner_dsn_key="dsn",
    runner_service_account=None, runner_image_pull_secrets=[], pod_grace_seconds=5,
)  # fmt: skip


def _executor(run: TrackedRun) -> tuple[PodExecutor, dict[uuid.UUID, TrackedRun], Any]:
    runs = {run.run_id: run}
    seen = SimpleNamespace(problems=[], retries=[], placed=[], kube=_Kube(), engine=_Engine())

    async def on_problem(run_id: uuid.UUID, reason: str, message: str) -> None:
        seen.problems.append(message)

    async def on_outcome(outcome: SegmentOutcome) -> None:
        pass

    executor = PodExecutor(
        engine=seen.engine, kube=seen.kube, settings=SETTINGS,  # type: ignore[arg-type]
        runs=runs, catalog=_Catalog(),  # type: ignore[arg-type]
        on_outcome=on_outcome, on_problem=on_problem, on_placed=seen.placed.append,
        retry_at=lambda run_id, when: seen.retries.append(when),
    )  # fmt: skip
    return executor, runs, seen


def _succeeded_pod(ref: RunRef, name: str) -> dict[str, Any]:
    ended = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    return {
        "metadata": {"name": name, "namespace": ref.namespace, "labels": {RUN_LABEL: ref.uid}},
        "status": {"phase": "Succeeded", "containerStatuses": [{"state": ended}]},
    }


def _failed_pod(ref: RunRef, name: str) -> dict[str, Any]:
    ended = {"terminated": {"exitCode": 1, "reason": "Error"}}
    return {
        "metadata": {"name": name, "namespace": ref.namespace, "labels": {RUN_LABEL: ref.uid}},
        "status": {"phase": "Failed", "containerStatuses": [{"state": ended}]},
    }


async def _until(condition: Any, within: float = 2.0) -> None:
    """Let the executor's tasks and timers run until ``condition()`` holds (``drain``
    would cancel the timers under test)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, "the executor did not get there in time"
        await asyncio.sleep(0.005)


def _tracked() -> TrackedRun:
    return TrackedRun(RunRef("team", "order-1", str(uuid.uuid4())), phase=RunStatus.RUNNING)


async def test_back_offs_of_an_inline_segment_do_not_use_up_its_pods_retries() -> None:
    run = _tracked()
    run.inline_failures = 4  # the store was down while the run was inline
    executor, _, seen = _executor(run)
    executor.submit(run)
    await _until(lambda: run.pod.state is PodState.RUNNING)
    assert seen.kube.created == [run.pod.pod]
    executor.pod_event(read_pod(_failed_pod(run.ref, run.pod.pod)))
    await _until(lambda: seen.retries)
    assert seen.engine.failed == []  # not given up
    assert len(seen.problems) == 1 and "(1 of 3 retries)" in seen.problems[0]
    assert run.pod_failures == 1 and run.inline_failures == 4


async def test_a_start_deadline_that_fires_as_its_run_is_forgotten_does_nothing() -> None:
    run = _tracked()
    executor, runs, seen = _executor(run)
    executor.submit(run)
    await _until(lambda: run.pod.state is PodState.RUNNING)
    del runs[run.run_id]  # forgotten; its start deadline fires in the same turn
    await _until(lambda: not run.timers)  # it fired
    await asyncio.sleep(0.05)  # and what it started ran
    assert seen.kube.deleted == [] and seen.problems == [] and seen.retries == []


async def test_a_pod_that_does_not_start_in_time_fails_its_segment() -> None:
    """The contrast to the test above: with its run tracked, the deadline acts."""
    run = _tracked()
    executor, _, seen = _executor(run)
    executor.submit(run)
    await _until(lambda: run.pod.state is PodState.RUNNING)
    pod = run.pod.pod
    # The Pod is deleted, then the failure reported (after the delete's await): wait for both.
    await _until(lambda: seen.kube.deleted and seen.problems)
    assert seen.kube.deleted == [pod]
    assert len(seen.problems) == 1 and "did not start within" in seen.problems[0]
    assert run.pod.state is PodState.IDLE and run.pod_failures == 1


async def test_each_segment_pod_is_told_as_it_is_placed() -> None:
    """So the status names it (``status.executor.pod``) even if its segment records
    nothing while it runs."""
    run = _tracked()
    executor, _, seen = _executor(run)
    executor.submit(run)
    await _until(lambda: run.pod.state is PodState.RUNNING)
    assert seen.placed == [run.run_id]
    first = run.pod.pod
    executor.pod_event(read_pod(_succeeded_pod(run.ref, first)))
    await _until(lambda: run.pod.state is PodState.IDLE)
    executor.submit(run)
    await _until(lambda: run.pod.state is PodState.RUNNING)
    assert run.pod.pod != first and seen.placed == [run.run_id, run.run_id]
