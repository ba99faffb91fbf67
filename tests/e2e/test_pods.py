"""The pod executor end to end: one Pod per segment, run by the node stand-in.

The operator here has no workflow code (as in production): a `WorkflowDefinition` resource sends
each run's segments to Pods running ``kflow runner`` from this checkout, which connect to
PostgreSQL with the DSN from a Secret and report progress by NOTIFY.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kflow._workflow import Registry
from kflow.plugin.manifest import ManifestOptions, workflow_object
from tests.e2e.conftest import Harness, wait_for
from tests.e2e.operator_env import ROOT, Operator, Runs, lines

WORKFLOWS = Registry.from_modules(["tests.e2e.workflows"])


def operator_without_code(
    harness: Harness, namespace: str, pg_dsn: str, tmp_path: Path, **env: str
) -> Operator:
    """An operator that runs every segment in a Pod (it has no workflow code itself)."""
    harness.run(
        "kubectl", "create", "secret", "generic", "kflow-db", "-n", namespace,
        f"--from-literal=dsn={pg_dsn}",
    )  # fmt: skip
    op = Operator(harness, namespace, pg_dsn, tmp_path)
    op.env.update(
        KFLOW_WORKFLOW_MODULES="[]",  # the code is in the Pods' image only
        KFLOW_DEFAULT_EXECUTOR="pod",
        KFLOW_RUNNER_DSN_SECRET="kflow-db",
        KFLOW_SEGMENT_RETRIES="1",
        KFLOW_POD_START_TIMEOUT="4",
        KFLOW_POD_GRACE_SECONDS="2",
        **env,
    )
    return op


@pytest.fixture
def pod_operator(
    harness: Harness, crds: None, namespace: str, pg_dsn: str, tmp_path: Path
) -> Iterator[Operator]:
    with operator_without_code(harness, namespace, pg_dsn, tmp_path).running() as op:
        yield op


def declare(runs: Runs, workflow: str, **template: Any) -> None:
    """Apply the `WorkflowDefinition` resource of ``workflow``, as ``kubectl kflow manifest`` makes
    it, with this checkout's Python (the node stand-in runs no images)."""
    d = WORKFLOWS.active(workflow)
    assert d is not None
    manifest = workflow_object(d, ManifestOptions(module="tests.e2e.workflows", image="kflow:dev"))
    env = [{"name": "PYTHONPATH", "value": str(ROOT)}, *template.pop("env", [])]
    manifest["spec"]["template"].update(
        {"command": [sys.executable, "-m", "kflow.cli"], "env": env, **template}
    )
    path = runs.tmp / f"wf-{workflow}.json"
    path.write_text(json.dumps(manifest))
    runs.h.run("kubectl", "apply", "-n", runs.ns, "-f", path)


def pods(runs: Runs, name: str) -> list[client.V1Pod]:
    uid = runs.get(name)["metadata"]["uid"]
    core = client.CoreV1Api(runs.objects.api_client)
    found = core.list_namespaced_pod(runs.ns, label_selector=f"kflow.io/run={uid}").items
    return sorted(found, key=lambda p: int(p.metadata.labels["kflow.io/segment"]))


def test_a_run_goes_through_one_pod_per_segment(
    pod_operator: Operator, runs: Runs, tmp_path: Path
) -> None:
    log = tmp_path / "journey.log"
    declare(runs, "journey", labels={"team": "travel"}, annotations={"note": "from template"},
            imagePullSecrets=[{"name": "travel-registry"}])  # fmt: skip
    runs.apply("trip", "journey", {"log": str(log), "sleep_seconds": 1})
    status = wait_for(
        lambda: (s := runs.status("trip")).get("waiting", {}).get("kind") == "event" and s,
        timeout=60, what="the run to wait for its event",
    )  # fmt: skip
    assert status["executor"]["kind"] == "pod"
    runs.annotate("trip", "event.kflow.io/go", "{}")
    status = runs.wait_phase("trip", "Completed", timeout=60)
    assert status["output"] == "arrived"
    assert lines(log) == ["start", "finish"]
    # No Pod runs it now: the status does not keep naming an earlier segment's Pod.
    wait_for(lambda: "pod" not in runs.status("trip")["executor"], what="executor.pod to go")
    segment_pods = pods(runs, "trip")
    uid = runs.get("trip")["metadata"]["uid"]
    assert [p.metadata.name for p in segment_pods] == [f"trip-{uid[:8]}-s{n}" for n in (1, 2, 3)]
    for pod in segment_pods:
        assert pod.status.phase == "Succeeded"
        assert pod.metadata.labels["team"] == "travel"
        assert pod.metadata.annotations["note"] == "from template"
        assert [s.name for s in pod.spec.image_pull_secrets] == ["travel-registry"]
        assert pod.metadata.owner_references[0].uid == uid
        assert pod.spec.containers[0].security_context.run_as_non_root is True


def test_an_invalid_definition_is_ignored_and_says_why(pod_operator: Operator, runs: Runs) -> None:
    """What the CRD's schema cannot check (nothing of kflow's own may be replaced) is
    refused by the operator, with a Warning Event naming the field."""
    declare(runs, "steps", labels={"kflow.io/run": "mine"})
    name = "steps-v1"

    def warned() -> list[str]:
        core = client.CoreV1Api(runs.objects.api_client)
        found = core.list_namespaced_event(runs.ns, field_selector=f"involvedObject.name={name}")
        return [f"{e.reason}: {e.message}" for e in found.items if e.type == "Warning"]

    (event,) = wait_for(warned, timeout=30, what="the InvalidDefinition Event")
    assert event.startswith("InvalidDefinition: ignored: ")
    assert "template: labels: kflow.io/run: kflow.io/ labels are kflow's own" in event, event
    runs.apply("unplaced", "steps", {"log": "/dev/null", "steps": 1})
    # No definition places the run, and the operator has no code for it: it waits.
    assert runs.wait_phase("unplaced", "BlockedMissingHandler", timeout=30)


def test_status_shows_steps_while_the_pod_runs(
    pod_operator: Operator, runs: Runs, tmp_path: Path
) -> None:
    declare(runs, "steps")
    runs.apply("long", "steps", {"log": str(tmp_path / "long.log"), "steps": 6, "delay": 0.7})

    def partial() -> dict[str, Any] | None:
        status = runs.status("long")
        done = [s for s in status.get("steps", []) if s["state"] == "completed"]
        pod = (status.get("executor") or {}).get("pod")
        return status if status.get("phase") == "Running" and 1 <= len(done) < 6 and pod else None

    status = wait_for(partial, timeout=60, what="per-step status while the segment Pod runs")
    assert status["executor"]["pod"] == pods(runs, "long")[0].metadata.name
    runs.wait_phase("long", "Completed", timeout=60)
    assert len(pods(runs, "long")) == 1  # one segment, one Pod


def test_a_pod_killed_mid_step_is_retried_and_steps_run_once(
    harness: Harness, pod_operator: Operator, runs: Runs, tmp_path: Path
) -> None:
    log = tmp_path / "killed.log"
    declare(runs, "steps")
    runs.apply("killed", "steps", {"log": str(log), "steps": 4, "delay": 1.0})
    wait_for(lambda: len(lines(log)) >= 1, timeout=60, what="the first step")
    first = pods(runs, "killed")[0].metadata.name
    for pid in harness.node.pids(runs.ns, first):
        os.kill(pid, signal.SIGKILL)  # mid-step: the second step sleeps before it records
    status = runs.wait_phase("killed", "Completed", timeout=60)
    assert lines(log) == ["work-0", "work-1", "work-2", "work-3"]
    # The interrupted step may show a second attempt (it had been recorded as running).
    attempts = [s["attempts"] for s in status["steps"]]
    assert attempts[0] == 1 and attempts[2:] == [1, 1] and attempts[1] in (1, 2)
    assert len(pods(runs, "killed")) == 2
    assert any("SegmentFailed" in e and "code 137" in e for e in runs.events("killed"))
    assert 'kflow_pod_problems_total{reason="SegmentFailed"} 1.0' in pod_operator.metrics()


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ({"command": ["/nonexistent/kflow"]}, "exited with code 128"),
        ({"env": [{"name": "KFLOW_DB_TIMEOUT", "value": "soon"}]}, "settings are invalid"),
        (
            {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "x"}}}]},
            "did not start within 4s: CreateContainerConfigError",
        ),
    ],
    ids=["command-missing", "runner-error", "never-starts"],
)
def test_failing_pods_are_retried_then_fail_the_run_with_the_reason(
    pod_operator: Operator, runs: Runs, tmp_path: Path, template: dict[str, Any], reason: str
) -> None:
    declare(runs, "steps", **template)
    runs.apply("doomed", "steps", {"log": str(tmp_path / "doomed.log")})
    status = runs.wait_phase("doomed", "Failed", timeout=60)
    assert "failed 2 times in a row" in status["error"] and reason in status["error"]
    assert any(e.startswith("SegmentFailed") and reason in e for e in runs.events("doomed"))
    # A retry (after fixing the Workflow) resumes it; here it fails the same way again.
    runs.annotate("doomed", "kflow.io/retry", "")
    wait_for(lambda: len(runs.events("doomed")) > 3, timeout=60, what="the retried segment")


def test_cancel_stops_the_running_pod_then_compensates(
    pod_operator: Operator, runs: Runs, tmp_path: Path
) -> None:
    log = tmp_path / "cancel.log"
    declare(runs, "slow-saga")
    runs.apply("trip", "slow-saga", {"log": str(log), "delay": 60})
    wait_for(lambda: lines(log) == ["reserve"], timeout=60, what="the reservation")
    running = pods(runs, "trip")[0].metadata.name
    runs.annotate("trip", "kflow.io/cancel", "customer changed their mind")
    status = runs.wait_phase("trip", "Compensated", timeout=60)
    assert lines(log) == ["reserve", "undo-reserve"]  # the slow step never finished
    assert status["error"] == "cancelled: customer changed their mind"
    # The running Pod was deleted (stopped within its grace period); a second one undid.
    # (The status may show the run Compensated before that Pod's process has exited.)
    wanted = [(running.replace("-s1", "-s2"), "Succeeded")]
    wait_for(lambda: [(p.metadata.name, p.status.phase) for p in pods(runs, "trip")] == wanted,
             what="the second Pod to succeed, the first to be gone")  # fmt: skip


def test_operator_restart_adopts_the_running_pod(
    pod_operator: Operator, runs: Runs, tmp_path: Path
) -> None:
    log = tmp_path / "adopted.log"
    declare(runs, "steps")
    runs.apply("steady", "steps", {"log": str(log), "steps": 5, "delay": 0.8})
    wait_for(lambda: len(lines(log)) >= 1, timeout=60, what="the first step")
    pod_operator.kill()
    pod_operator.start()
    runs.wait_phase("steady", "Completed", timeout=60)
    assert lines(log) == [f"work-{i}" for i in range(5)]
    assert len(pods(runs, "steady")) == 1  # adopted, not duplicated


def test_deleting_a_run_in_a_pod_undoes_it_before_it_goes(
    pod_operator: Operator, runs: Runs, tmp_path: Path
) -> None:
    log = tmp_path / "deleted.log"
    declare(runs, "slow-saga")
    runs.apply("gone", "slow-saga", {"log": str(log), "delay": 60})
    wait_for(lambda: lines(log) == ["reserve"], timeout=60, what="the reservation")
    runs.h.run("kubectl", "delete", "-n", runs.ns, "wfr/gone", "--timeout=60s")
    assert lines(log) == ["reserve", "undo-reserve"]


def test_finished_pods_are_deleted_after_their_ttl(
    harness: Harness, crds: None, namespace: str, pg_dsn: str, runs: Runs, tmp_path: Path
) -> None:
    op = operator_without_code(harness, namespace, pg_dsn, tmp_path, KFLOW_POD_TTL="3")
    with op.running():
        declare(runs, "steps")
        runs.apply("brief", "steps", {"log": str(tmp_path / "brief.log"), "steps": 1})
        runs.wait_phase("brief", "Completed", timeout=60)
        assert len(pods(runs, "brief")) == 1  # kept a while, with its log
        wait_for(lambda: not pods(runs, "brief"), timeout=30, what="the Pod's cleanup")
