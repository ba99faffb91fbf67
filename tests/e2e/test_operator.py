"""The operator end to end: kubectl against a real API server, runs in real PostgreSQL.

Each test gets a namespace and an operator process of its own (``kflow operator``,
watching that namespace, with the workflows of ``tests/e2e/workflows.py``). Step
functions log to a file, so tests count how often each step really ran.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kflow.localpg import LocalPostgres, free_port
from tests.e2e.conftest import Harness, wait_for

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"


class Operator:
    """A ``kflow operator`` process for one namespace; kill it and start it again."""

    def __init__(self, harness: Harness, namespace: str, dsn: str, workdir: Path) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.log = workdir / "operator.log"
        self.env = {
            **harness.env,
            "PYTHONPATH": str(ROOT),
            "KFLOW_DSN": dsn,
            "KFLOW_SCHEMA": f"kflow_e2e_{uuid.uuid4().hex[:8]}",
            "KFLOW_NAMESPACES": json.dumps([namespace]),
            "KFLOW_WORKFLOW_MODULES": json.dumps(["tests.e2e.workflows"]),
            "KFLOW_HEALTH_PORT": str(self.port),
            "KFLOW_METRICS_PORT": str(self.metrics_port),
            "KFLOW_STATUS_INTERVAL": "0.2",
            "KFLOW_LEASE_TTL": "5",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kflow.cli", "operator"],
                env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for(self.healthy, timeout=30, what=f"the operator's health endpoint ({self.log})")

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"operator exited {self.proc.returncode}:\n{self.log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
            return str(r.read().decode())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def crds(harness: Harness) -> None:
    harness.run("kubectl", "apply", "-f", CRDS)
    for crd in ("workflows.kflow.io", "workflowruns.kflow.io"):
        harness.run("kubectl", "wait", "--for=condition=Established", f"crd/{crd}", "--timeout=30s")


@pytest.fixture
def operator(
    harness: Harness, crds: None, namespace: str, pg_dsn: str, tmp_path: Path
) -> Iterator[Operator]:
    op = Operator(harness, namespace, pg_dsn, tmp_path)
    op.start()
    yield op
    op.stop()
    print(f"--- operator log ({op.log}) ---\n{op.log.read_text()[-8000:]}")  # shown on failure


class Runs:
    """kubectl for WorkflowRuns in one namespace, plus reads through the API."""

    def __init__(self, harness: Harness, api: client.ApiClient, namespace: str, tmp: Path):
        self.h, self.ns, self.tmp = harness, namespace, tmp
        self.objects = client.CustomObjectsApi(api)

    def apply(self, name: str, workflow: str, input: dict[str, Any] | None, **spec: Any) -> None:
        manifest = {
            "apiVersion": "kflow.io/v1alpha1", "kind": "WorkflowRun",
            "metadata": {"name": name}, "spec": {"workflow": workflow, "input": input, **spec},
        }  # fmt: skip
        path = self.tmp / f"{name}.json"
        path.write_text(json.dumps(manifest))
        self.h.run("kubectl", "apply", "-n", self.ns, "-f", path)

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.objects.get_namespaced_custom_object(
            "kflow.io", "v1alpha1", self.ns, "workflowruns", name
        )
        return obj

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get(name).get("status") or {})

    def wait_phase(self, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(  # type: ignore[no-any-return]
            lambda: (s := self.status(name)).get("phase") == phase and s,
            timeout=timeout,
            what=f"{name} to reach {phase}",
        )

    def rejected(self, name: str) -> list[dict[str, Any]]:
        """Wait for, and return, the events the run's status reports as rejected."""
        return wait_for(  # type: ignore[no-any-return]
            lambda: [e for e in self.status(name).get("events", []) if e["state"] == "rejected"],
            what=f"a rejected event in the status of {name}",
        )

    def annotations(self, name: str) -> dict[str, str]:
        return dict(self.get(name)["metadata"].get("annotations") or {})

    def annotate(self, name: str, key: str, value: str) -> None:
        self.h.run(
            "kubectl", "annotate", "-n", self.ns, "--overwrite", f"wfr/{name}", f"{key}={value}"
        )

    def events(self, name: str) -> list[str]:
        core = client.CoreV1Api(self.objects.api_client)
        items = core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}")
        return [f"{e.reason}: {e.message}" for e in items.items]


@pytest.fixture
def runs(harness: Harness, api: client.ApiClient, namespace: str, tmp_path: Path) -> Runs:
    return Runs(harness, api, namespace, tmp_path)


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_multi_step_run_completes_with_per_step_status(
    operator: Operator, runs: Runs, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    runs.apply("three", "steps", {"log": str(log), "steps": 3})
    status = runs.wait_phase("three", "Completed")
    assert status["output"] == ["work-0", "work-1", "work-2"]
    assert [(s["name"], s["state"], s["attempts"]) for s in status["steps"]] == [
        ("work", "completed", 1), ("work#2", "completed", 1), ("work#3", "completed", 1),
    ]  # fmt: skip
    assert status["runId"] == runs.get("three")["metadata"]["uid"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    table = runs.h.run("kubectl", "get", "wfr", "-n", runs.ns).stdout
    assert table.split("\n")[0].split() == [
        "NAME",
        "WORKFLOW",
        "VERSION",
        "PHASE",
        "STEP",
        "WAITING",
        "AGE",
    ]
    assert "Completed" in table
    assert lines(log) == ["work-0", "work-1", "work-2"]
    assert any(e.startswith("Completed") for e in runs.events("three"))
    metrics = operator.metrics()
    assert 'kflow_runs{phase="Completed"} 1.0' in metrics
    assert 'kflow_step_duration_seconds_count{outcome="completed",workflow="steps"} 3.0' in metrics
    assert 'kflow_segments_total{status="Completed"} 1.0' in metrics


def test_status_follows_a_run_while_it_runs(operator: Operator, runs: Runs, tmp_path: Path) -> None:
    log = tmp_path / "slow.log"
    runs.apply("slow", "steps", {"log": str(log), "steps": 6, "delay": 0.5})
    seen = wait_for(
        lambda: (
            (s := runs.status("slow")).get("phase") == "Running"
            and any(st["state"] == "completed" for st in s.get("steps", []))
            and s
        ),
        what="a Running status with completed steps",
    )
    assert len([s for s in seen["steps"] if s["state"] == "completed"]) < 6
    assert seen["currentStep"].startswith("work")
    runs.wait_phase("slow", "Completed")


def test_a_sleeping_run_resumes_at_its_time(operator: Operator, runs: Runs, tmp_path: Path) -> None:
    log = tmp_path / "sleep.log"
    runs.apply("nap", "sleeper", {"log": str(log), "sleep_seconds": 3})
    waiting = runs.wait_phase("nap", "Waiting")
    assert waiting["waiting"]["kind"] == "sleep"
    started = time.monotonic()
    runs.wait_phase("nap", "Completed", timeout=30)
    assert time.monotonic() - started >= 1.5
    assert lines(log) == ["before", "after"]


def test_events_by_annotation_before_and_after_the_wait(
    operator: Operator, runs: Runs, tmp_path: Path
) -> None:
    log = tmp_path / "approval.log"
    runs.apply("after", "approval", {"log": str(log)})
    assert runs.wait_phase("after", "Waiting")["waiting"] == {
        "kind": "event",
        "event": "approved",
        "until": runs.status("after")["waiting"]["until"],
    }
    runs.annotate("after", "event.kflow.io/approved", '{"by": "ana"}')
    done = runs.wait_phase("after", "Completed")
    assert done["output"] == "ana"
    assert "kflow_event_to_resume_seconds_count 1.0" in operator.metrics()
    wait_for(
        lambda: "event.kflow.io/approved" not in runs.annotations("after"),
        what="the event annotation to be removed",
    )
    assert done["events"][0]["state"] == "consumed"

    # Before: the annotation is there when the run is created.
    manifest = tmp_path / "before.json"
    manifest.write_text(json.dumps({
        "apiVersion": "kflow.io/v1alpha1", "kind": "WorkflowRun",
        "metadata": {"name": "before", "annotations": {"event.kflow.io/approved": '{"by": "bo"}'}},
        "spec": {"workflow": "approval", "input": {"log": str(log)}},
    }))  # fmt: skip
    runs.h.run("kubectl", "apply", "-n", runs.ns, "-f", manifest)
    assert runs.wait_phase("before", "Completed")["output"] == "bo"
    assert lines(log) == ["approved-by-ana", "approved-by-bo"]

    # After the end: reported, not silently dropped.
    runs.annotate("before", "event.kflow.io/approved", '{"by": "late"}')
    late = runs.rejected("before")
    assert "the run is Completed" in late[0]["message"]
    assert "event.kflow.io/approved" not in runs.annotations("before")


def test_bad_payloads_are_reported_and_lose_nothing(
    operator: Operator, runs: Runs, tmp_path: Path
) -> None:
    log = tmp_path / "bad.log"
    runs.apply("picky", "approval", {"log": str(log)})
    runs.wait_phase("picky", "Waiting")
    runs.annotate("picky", "event.kflow.io/approved", "{not json")
    rejected = runs.rejected("picky")
    assert "not JSON" in rejected[0]["message"]
    assert any(e.startswith("EventRejected") for e in runs.events("picky"))
    assert runs.status("picky")["phase"] == "Waiting"
    runs.annotate("picky", "event.kflow.io/approved", '{"by": "cy"}')
    assert runs.wait_phase("picky", "Completed")["output"] == "cy"


def test_the_same_payload_twice_is_reported_a_varied_one_delivered(
    operator: Operator, runs: Runs, tmp_path: Path
) -> None:
    log = tmp_path / "twice.log"
    runs.apply("twice", "approval-twice", {"log": str(log)})
    runs.wait_phase("twice", "Waiting")
    runs.annotate("twice", "event.kflow.io/approved", '{"by": "dee"}')
    wait_for(lambda: lines(log) == ["first-dee"], what="the first approval")
    wait_for(
        lambda: "event.kflow.io/approved" not in runs.annotations("twice"),
        what="the first annotation to be removed",
    )
    runs.annotate("twice", "event.kflow.io/approved", '{"by": "dee"}')  # exactly again
    rejected = runs.rejected("twice")
    assert "vary the payload" in rejected[0]["message"]
    assert runs.status("twice")["phase"] == "Waiting"
    runs.annotate("twice", "event.kflow.io/approved", '{"by": "dee", "id": 2}')
    assert runs.wait_phase("twice", "Completed")["output"] == ["dee", "dee"]


def test_bad_manifests_are_rejected_naming_the_field(
    operator: Operator, runs: Runs, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({
        "apiVersion": "kflow.io/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": "bad"},
        "spec": {"workflow": "steps", "version": 0},
    }))  # fmt: skip
    result = runs.h.run("kubectl", "apply", "-n", runs.ns, "-f", bad, check=False)
    assert result.returncode != 0 and "spec.version" in result.stderr
    server = runs.h.run(
        "kubectl", "apply", "--validate=false", "-n", runs.ns, "-f", bad, check=False
    )
    assert server.returncode != 0 and "spec.version" in server.stderr  # the API server's own check
    bad.write_text(json.dumps({
        "apiVersion": "kflow.io/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": "bad"},
        "spec": {"version": 1},
    }))  # fmt: skip
    result = runs.h.run(
        "kubectl", "apply", "--validate=false", "-n", runs.ns, "-f", bad, check=False
    )
    assert result.returncode != 0 and "spec.workflow: Required value" in result.stderr


def test_invalid_input_is_reported_on_the_status(operator: Operator, runs: Runs) -> None:
    runs.apply("typo", "steps", {"lg": "/tmp/x"})
    status = runs.wait_phase("typo", "Failed")
    assert "log: Field required" in status["error"]


def test_cancel_runs_durable_compensations(operator: Operator, runs: Runs, tmp_path: Path) -> None:
    log = tmp_path / "saga.log"
    runs.apply("trip", "saga", {"log": str(log)})
    runs.wait_phase("trip", "Waiting")
    runs.annotate("trip", "kflow.io/cancel", "customer asked")
    status = runs.wait_phase("trip", "Compensated")
    assert status["error"] == "cancelled: customer asked"
    assert lines(log) == ["reserve", "charge", "undo-charge", "undo-reserve"]


def test_retry_of_a_failed_run(operator: Operator, runs: Runs, tmp_path: Path) -> None:
    log, flag = tmp_path / "flaky.log", tmp_path / "flag"
    runs.apply("flaky", "flaky", {"log": str(log), "flag": str(flag)})
    failed = runs.wait_phase("flaky", "Failed")
    assert "flag is not there yet" in failed["error"]
    flag.touch()
    runs.annotate("flaky", "kflow.io/retry", "")
    assert runs.wait_phase("flaky", "Completed")["output"] == "flag found"
    assert lines(log) == ["first"]  # the completed step did not run again


def test_a_blocked_run_resumes_when_its_code_is_deployed(operator: Operator, runs: Runs) -> None:
    runs.apply("early", "arrives-later", None)
    status = runs.wait_phase("early", "BlockedMissingHandler")
    assert {c["type"]: c["status"] for c in status["conditions"]}["Blocked"] == "True"
    assert "no handler for workflow 'arrives-later'" in status["error"]
    assert any(e.startswith("BlockedMissingHandler") for e in runs.events("early"))
    operator.stop()  # a new release of the operator brings the code
    operator.env["KFLOW_WORKFLOW_MODULES"] = json.dumps(
        ["tests.e2e.workflows", "tests.e2e.late_workflows"]
    )
    operator.start()
    done = runs.wait_phase("early", "Completed")
    assert done["output"] == "finally"
    assert {c["type"]: c["status"] for c in done["conditions"]}["Blocked"] == "False"


def test_operator_killed_mid_run_and_mid_sleep(
    operator: Operator, runs: Runs, tmp_path: Path
) -> None:
    busy, sleepy = tmp_path / "busy.log", tmp_path / "sleepy.log"
    runs.apply("busy", "steps", {"log": str(busy), "steps": 8, "delay": 0.4})
    runs.apply("sleepy", "sleeper", {"log": str(sleepy), "sleep_seconds": 4})
    runs.wait_phase("sleepy", "Waiting")  # its "before" step is recorded, its timer set
    wait_for(lambda: len(lines(busy)) >= 2, what="progress of the busy run")
    operator.kill()
    time.sleep(1)
    operator.start()
    runs.wait_phase("busy", "Completed", timeout=60)
    runs.wait_phase("sleepy", "Completed", timeout=60)
    done = lines(busy)
    # Each step completed once; the one running at the kill may have run twice.
    assert sorted(set(done)) == [f"work-{i}" for i in range(8)]
    assert len(done) - len(set(done)) <= 1
    assert lines(sleepy) == ["before", "after"]  # the timer fired exactly once
    assert "kflow_timer_lateness_seconds_count 1.0" in operator.metrics()


def test_deleting_an_active_run_cancels_it_first(
    operator: Operator, runs: Runs, tmp_path: Path
) -> None:
    log = tmp_path / "deleted.log"
    runs.apply("doomed", "saga", {"log": str(log)})
    runs.wait_phase("doomed", "Waiting")
    runs.h.run("kubectl", "delete", "-n", runs.ns, "wfr/doomed", "--timeout=30s")
    assert lines(log) == ["reserve", "charge", "undo-charge", "undo-reserve"]


def test_the_admission_webhook_refuses_bad_input(
    harness: Harness, crds: None, namespace: str, pg_dsn: str, runs: Runs, tmp_path: Path
) -> None:
    op = Operator(harness, namespace, pg_dsn, tmp_path)
    name = f"validate-{uuid.uuid4().hex[:8]}.kflow.io"
    op.env.update(KFLOW_WEBHOOK_PORT=str(free_port()), KFLOW_WEBHOOK_NAME=name)
    op.start()
    try:
        wait_for(
            lambda: harness.run("kubectl", "get", "validatingwebhookconfiguration", name,
                                check=False).returncode == 0,
            what="the webhook configuration",
        )  # fmt: skip
        bad = tmp_path / "bad-input.json"
        bad.write_text(json.dumps({
            "apiVersion": "kflow.io/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": "typo"},
            "spec": {"workflow": "steps", "input": {"lg": "/tmp/x"}},
        }))  # fmt: skip
        refused = harness.run("kubectl", "apply", "-n", namespace, "-f", bad, check=False)
        assert refused.returncode != 0
        assert "spec.input" in refused.stderr and "log: Field required" in refused.stderr
        runs.apply("fine", "steps", {"log": str(tmp_path / "fine.log"), "steps": 1})
        runs.wait_phase("fine", "Completed")
    finally:
        op.stop()
        harness.run("kubectl", "delete", "validatingwebhookconfiguration", name, check=False)


def test_deletion_waits_for_a_stalled_database_and_never_hangs(
    harness: Harness, crds: None, namespace: str, runs: Runs, tmp_path: Path
) -> None:
    log = tmp_path / "stalled.log"
    with LocalPostgres() as own_pg:
        op = Operator(harness, namespace, own_pg.dsn, tmp_path)
        op.env["KFLOW_DB_TIMEOUT"] = "2"
        op.start()
        try:
            runs.apply("stuck", "saga", {"log": str(log)})
            runs.wait_phase("stuck", "Waiting")
            postmaster = int((own_pg.datadir / "postmaster.pid").read_text().split()[0])
            frozen = [postmaster, *children(postmaster)]
            for pid in frozen:  # the database (and every backend) stops answering
                os.kill(pid, signal.SIGSTOP)
            try:
                harness.run("kubectl", "delete", "-n", namespace, "wfr/stuck", "--wait=false")
                wait_for(
                    lambda: any(e.startswith("DeletionDelayed") for e in runs.events("stuck")),
                    timeout=30,
                    what="a DeletionDelayed event",
                )
                assert runs.get("stuck")["metadata"]["deletionTimestamp"]  # still there
                assert op.healthy()
            finally:
                for pid in frozen:
                    os.kill(pid, signal.SIGCONT)
            wait_for(
                lambda: harness.run("kubectl", "get", "-n", namespace, "wfr/stuck",
                                    check=False).returncode != 0,
                timeout=60,
                what="the WorkflowRun to be deleted once the database answers",
            )  # fmt: skip
            assert lines(log) == ["reserve", "charge", "undo-charge", "undo-reserve"]
        finally:
            op.stop()
            print(f"--- operator log ---\n{op.log.read_text()[-6000:]}")  # shown on failure
