"""The operator end to end: kubectl against a real API server, runs in real PostgreSQL.

Each test gets a namespace and an operator process of its own (``kflow operator``,
watching that namespace, with the workflows of ``tests/e2e/workflows.py``). Step
functions log to a file, so tests count how often each step really ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from kubernetes import client

from kflow.dev.postgres import LocalPostgres, free_port
from tests.e2e.conftest import Harness, wait_for
from tests.e2e.operator_env import Operator, Runs, children, lines


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
    assert {c["type"]: c["status"] for c in status["conditions"]}["Succeeded"] == "True"
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


def test_a_restart_runs_no_code_for_a_run_with_nothing_new(
    operator: Operator, runs: Runs, tmp_path: Path
) -> None:
    log = tmp_path / "idle.log"
    runs.apply("idle", "approval", {"log": str(log)})
    runs.wait_phase("idle", "Waiting")
    run_id = uuid.UUID(runs.get("idle")["metadata"]["uid"])

    def segments() -> int:
        return operator.in_store(lambda store: store.get_run(run_id)).segments

    before = segments()
    for _ in range(2):
        operator.stop()
        operator.start()
        time.sleep(1.5)  # what adoption would submit has run by now
    assert segments() == before
    assert runs.status("idle")["phase"] == "Waiting"
    # An event that reached the inbox while no operator ran is looked for at adoption.
    operator.stop()
    operator.in_store(
        lambda store: store.send_event(
            run_id, name="approved", payload={"by": "eve"}, dedupe_key=None,
            now=datetime.now(UTC),
        )
    )  # fmt: skip
    operator.start()
    assert runs.wait_phase("idle", "Completed")["output"] == "eve"
    assert segments() == before + 1


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
    # Valid JSON that does not fit the wait's type: set aside by the wait, reported alike.
    runs.annotate("picky", "event.kflow.io/approved", '{"who": "cy"}')
    wait_for(lambda: len(runs.rejected("picky")) == 2, what="the misfit's rejection")
    assert any("by: Field required" in e["message"] for e in runs.rejected("picky"))
    wait_for(lambda: any("event.kflow.io/approved: payload does not match Approval" in e
                         for e in runs.events("picky")), what="its EventRejected")  # fmt: skip
    # One form, in time order: refused by the operator, then set aside by the wait.
    assert [e["message"].split(":")[0] for e in runs.rejected("picky")] == [
        "payload is not JSON", "payload does not match Approval",
    ]  # fmt: skip
    rejections = sorted(e for e in runs.events("picky") if e.startswith("EventRejected"))
    assert [e.split(": ")[1] for e in rejections] == ["event.kflow.io/approved"] * 2
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


def test_a_refused_run_is_reported_once_and_retry_takes_its_fixed_spec(
    operator: Operator, runs: Runs, tmp_path: Path
) -> None:
    runs.apply("typo", "steps", {"lg": "/tmp/x"})
    runs.wait_phase("typo", "Failed")
    for _ in range(2):
        operator.stop()
        operator.start()
    log = tmp_path / "fixed.log"
    runs.apply("typo", "steps", {"log": str(log), "steps": 1})  # fixed: nothing runs yet
    time.sleep(2)
    assert runs.status("typo")["phase"] == "Failed" and lines(log) == []
    refusals = [e for e in runs.events("typo") if e.startswith("InvalidInput")]
    assert len(refusals) == 1, refusals  # not again at each restart
    runs.annotate("typo", "kflow.io/retry", "")
    assert runs.wait_phase("typo", "Completed")["output"] == ["work-0"]
    assert "kflow.io/retry" not in runs.annotations("typo")
    assert "Retried: retry: the spec is valid now; the run starts" in runs.events("typo")


def test_a_runs_spec_cannot_change_under_it(operator: Operator, runs: Runs, tmp_path: Path) -> None:
    log = tmp_path / "edited.log"
    runs.apply("edited", "approval", {"log": str(log)})
    runs.apply("finished", "steps", {"log": str(tmp_path / "finished.log"), "steps": 1})
    runs.wait_phase("edited", "Waiting")
    runs.wait_phase("finished", "Completed")
    for name in ("edited", "finished"):
        runs.h.run("kubectl", "patch", "-n", runs.ns, f"wfr/{name}", "--type=merge",
                   "-p", json.dumps({"spec": {"input": "garbage"}}))  # fmt: skip

    def changed(name: str) -> dict[str, str] | None:
        found = [c for c in runs.status(name).get("conditions", []) if c["type"] == "SpecChanged"]
        return found[0] if found else None

    for name in ("edited", "finished"):
        condition = wait_for(lambda name=name: changed(name), what=f"{name}'s SpecChanged")
        assert condition["status"] == "True"
        assert condition["message"].startswith(
            "spec.input changed after the run started: the run keeps the spec it started with"
        )
    operator.stop()
    operator.start()  # PostgreSQL's record is the truth: nothing is re-derived from the spec
    time.sleep(2)
    assert runs.status("edited")["phase"] == "Waiting"
    assert runs.status("finished")["phase"] == "Completed"
    for name in ("edited", "finished"):
        said = [e for e in runs.events(name) if e.startswith("SpecChanged")]
        assert len(said) == 1, said  # once, not again at the restart
        assert changed(name) is not None
        assert runs.status(name)["observedGeneration"] == runs.get(name)["metadata"]["generation"]
    runs.annotate("edited", "event.kflow.io/approved", '{"by": "ana"}')
    assert runs.wait_phase("edited", "Completed")["output"] == "ana"
    assert lines(log) == ["approved-by-ana"]  # with its first input


def test_runs_in_two_namespaces_never_share_kv(
    harness: Harness, crds: None, namespace: str, api: client.ApiClient, pg_dsn: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    other = f"{namespace}-b"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    try:
        op = Operator(harness, namespace, pg_dsn, tmp_path)
        op.env["KFLOW_NAMESPACES"] = json.dumps([namespace, other])
        a, b = Runs(harness, api, namespace, tmp_path), Runs(harness, api, other, tmp_path)
        with op.running():
            a.apply("set", "notes", {"key": "secret", "value": "team-a"})
            assert a.wait_phase("set", "Completed")["output"] == "team-a"
            b.apply("read", "notes", {"key": "secret"})
            assert "output" not in b.wait_phase("read", "Completed")  # None: not team-a's
            a.apply("read", "notes", {"key": "secret"})
            assert a.wait_phase("read", "Completed")["output"] == "team-a"  # its own, kept
    finally:
        core.delete_namespace(other)


def test_cancel_runs_durable_compensations(operator: Operator, runs: Runs, tmp_path: Path) -> None:
    log = tmp_path / "saga.log"
    runs.apply("trip", "saga", {"log": str(log)})
    runs.wait_phase("trip", "Waiting")
    runs.annotate("trip", "kflow.io/cancel", "customer asked")
    status = runs.wait_phase("trip", "Compensated")
    assert status["error"] == "cancelled: customer asked"
    assert lines(log) == ["reserve", "charge", "undo-charge", "undo-reserve"]
    wait_for(lambda: "Cancelled: cancel (customer asked): the run is Compensated"
             in runs.events("trip"), what="the cancel's answer")  # fmt: skip


def test_every_action_gets_an_answer(operator: Operator, runs: Runs, tmp_path: Path) -> None:
    runs.apply("done", "steps", {"log": str(tmp_path / "done.log"), "steps": 1})
    runs.wait_phase("done", "Completed")
    for key in ("kflow.io/cancel", "kflow.io/retire", "kflow.io/retry"):
        runs.annotate("done", key, "")
        wait_for(lambda key=key: key not in runs.annotations("done"), what=f"{key} removed")
    answers = wait_for(lambda: len(e := runs.events("done")) >= 4 and e, what="three answers")
    assert sorted(answers) == sorted([
        "Completed: run Completed",
        "NothingToCancel: nothing to cancel: the run is Completed",
        "NothingToRetire: nothing to retire: the run is Completed",
        f"RetryRefused: run {runs.get('done')['metadata']['uid']} is Completed: "
        "only Failed or Blocked runs retry",
    ])  # fmt: skip
    assert runs.status("done")["phase"] == "Completed"


def test_retry_of_a_failed_run(operator: Operator, runs: Runs, tmp_path: Path) -> None:
    log, flag = tmp_path / "flaky.log", tmp_path / "flag"
    runs.apply("flaky", "flaky", {"log": str(log), "flag": str(flag)})
    kubectl_wait = ("kubectl", "wait", "-n", runs.ns, "wfr/flaky", "--timeout=30s")
    runs.h.run(*kubectl_wait, "--for=condition=Failed")  # as a CI job waits for an end
    failed = runs.status("flaky")
    assert failed["phase"] == "Failed" and "flag is not there yet" in failed["error"]
    by_type = {c["type"]: c for c in failed["conditions"]}
    assert by_type["Succeeded"]["status"] == "False"
    assert "flag is not there yet" in by_type["Failed"]["message"]
    assert "message" not in by_type["Blocked"]  # Blocked=False carries no error
    flag.touch()
    runs.annotate("flaky", "kflow.io/retry", "")
    runs.h.run(*kubectl_wait, "--for=condition=Succeeded")
    assert runs.status("flaky")["output"] == "flag found"
    assert any(e.startswith("Retried: retry: the run is ") for e in runs.events("flaky"))
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
    with op.running(), contextlib.ExitStack() as cleanup:
        cleanup.callback(
            harness.run, "kubectl", "delete", "validatingwebhookconfiguration", name, check=False
        )
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
        # Once the run exists, its workflow, version and input cannot change.
        for edit in ({"input": {"log": "/tmp/other"}}, {"version": 2}, {"workflow": "sleeper"}):
            patched = harness.run("kubectl", "patch", "-n", namespace, "wfr/fine", "--type=merge",
                                  "-p", json.dumps({"spec": edit}), check=False)  # fmt: skip
            assert patched.returncode != 0, edit
            field = next(iter(edit))
            assert f"spec.{field} cannot change once the run exists" in patched.stderr
        harness.run("kubectl", "label", "-n", namespace, "wfr/fine", "team=a")  # the rest may
        assert runs.get("fine")["spec"]["input"]["log"] == str(tmp_path / "fine.log")


def test_a_definition_conflict_is_reported_at_start(
    harness: Harness, crds: None, namespace: str, pg_dsn: str, runs: Runs, tmp_path: Path
) -> None:
    op = Operator(harness, namespace, pg_dsn, tmp_path)
    recorded = "0" * 64  # another contract for 'steps' v1 than the code's
    op.in_store(
        lambda store: store.upsert_definition(
            name="steps", version=1, signature=recorded, same=[recorded], steps=["work"],
            events=[], timeout_s=None, input_schema={}, output_schema={},
            now=datetime.now(UTC),
        )
    )  # fmt: skip
    manifest = tmp_path / "wf.json"
    manifest.write_text(json.dumps({
        "apiVersion": "kflow.io/v1alpha1", "kind": "WorkflowDefinition",
        "metadata": {"name": "steps-v1"},
        "spec": {"workflow": "steps", "version": 1, "signature": recorded, "executor": "inline"},
    }))  # fmt: skip
    harness.run("kubectl", "apply", "-n", namespace, "-f", manifest)
    with op.running():
        assert 'kflow_definition_conflicts{version="1",workflow="steps"} 1.0' in op.metrics()
        said = wait_for(lambda: runs.events("steps-v1"), what="an Event on the Workflow")
        assert len(said) == 1 and said[0].startswith(
            "DefinitionConflict: workflow 'steps' v1 is recorded with signature 000000000000"
        )
        assert f"(recorded {recorded}, code " in said[0]
        logged = [line for line in lines(op.log) if "definition conflict" in line]
        assert len(logged) == 1 and " ERROR " in logged[0]


def test_deletion_waits_for_a_stalled_database_and_never_hangs(
    harness: Harness, crds: None, namespace: str, runs: Runs, tmp_path: Path
) -> None:
    log = tmp_path / "stalled.log"
    with LocalPostgres() as own_pg:
        op = Operator(harness, namespace, own_pg.dsn, tmp_path)
        op.env["KFLOW_DB_TIMEOUT"] = "2"
        with op.running():
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


def test_nothing_runs_once_its_workflowrun_is_gone(
    operator: Operator, runs: Runs, tmp_path: Path
) -> None:
    # Deleted right after creation: the run starts only once kflow's finalizer is on the
    # object, so a deletion always cancels it first, and nothing runs after it is gone.
    logs = [tmp_path / f"brief-{i}.log" for i in range(6)]
    for i, log in enumerate(logs):
        runs.apply(f"brief-{i}", "steps", {"log": str(log), "steps": 4, "delay": 0.3})
        runs.h.run("kubectl", "delete", "-n", runs.ns, f"wfr/brief-{i}", "--timeout=30s")
    done = [lines(log) for log in logs]
    time.sleep(2)
    assert [lines(log) for log in logs] == done


def test_finished_runs_are_deleted_after_their_ttl(
    harness: Harness, crds: None, namespace: str, pg_dsn: str, runs: Runs, tmp_path: Path
) -> None:
    def gone(name: str) -> bool:
        listed = harness.run("kubectl", "get", "-n", namespace, "wfr", "-o", "name").stdout
        return f"workflowrun.kflow.io/{name}\n" not in listed

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({
        "apiVersion": "kflow.io/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": "bad"},
        "spec": {"workflow": "steps", "ttlSecondsAfterFinished": -1},
    }))  # fmt: skip
    result = harness.run("kubectl", "apply", "-n", namespace, "-f", bad, check=False)
    assert result.returncode != 0 and "spec.ttlSecondsAfterFinished" in result.stderr

    op = Operator(harness, namespace, pg_dsn, tmp_path)
    op.env["KFLOW_RUN_TTL"] = "3"  # the operator's default, for runs that give none
    with op.running():
        logs = {name: tmp_path / f"{name}.log" for name in ("at-once", "default", "kept")}
        runs.apply("at-once", "steps", {"log": str(logs["at-once"]), "steps": 1},
                   ttlSecondsAfterFinished=0)  # fmt: skip
        runs.apply("default", "steps", {"log": str(logs["default"]), "steps": 1})
        runs.apply("kept", "steps", {"log": str(logs["kept"]), "steps": 1},
                   ttlSecondsAfterFinished=3600)  # fmt: skip
        runs.wait_phase("default", "Completed")
        finished = time.monotonic()
        wait_for(lambda: gone("at-once"), timeout=30, what="the run with TTL 0 to be deleted")
        assert not gone("default")  # its 3 s are not over yet
        wait_for(lambda: gone("default"), timeout=30, what="the default TTL to delete the run")
        assert time.monotonic() - finished >= 2.5
        assert runs.wait_phase("kept", "Completed") and not gone("kept")
        assert all(lines(log) == ["work-0"] for log in logs.values())  # each ran, once
