"""``kubectl kflow`` end to end: kubectl finds the plugin on PATH and runs it against the
session's API server, with a real operator where runs must move.

Every command runs as ``kubectl kflow ...`` in a subprocess, exactly as a user types it;
assertions read the objects back through the API, so "nothing changed" is checked, not
assumed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from kflow._workflow import Registry
from tests.e2e.conftest import NOBODY, VIEWER, VIEWERS_GROUP, Harness, wait_for
from tests.e2e.operator_env import ROOT, Operator, Runs, lines

VENV_BIN = Path(sys.executable).parent  # where pip put the kubectl-kflow console script


def kflow(
    harness: Harness, *args: str, user: str | None = None, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``kubectl kflow ARGS`` as the admin (or a token-file `user`), from the repo root."""
    env = {**harness.env, "PATH": f"{harness.env['PATH']}:{VENV_BIN}"}
    if user is not None:
        env["KUBECONFIG"] = str(harness.cluster.kubeconfig_for(user))
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run(
        ["kubectl", "kflow", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args} failed ({result.returncode}):\n{result.stderr}"
    return result.stdout


def test_follow_a_run_and_deliver_its_event(
    operator: Operator, runs: Runs, harness: Harness, tmp_path: Path
) -> None:
    log = tmp_path / "approval.log"
    runs.apply("approve-me", "approval", {"log": str(log)})
    runs.wait_phase("approve-me", "Waiting")

    header, row = ok(kflow(harness, "runs", "-n", runs.ns)).splitlines()
    assert header.split() == ["NAME", "WORKFLOW", "VERSION", "PHASE", "STEP", "WAITING", "AGE"]
    assert row.split()[:5] == ["approve-me", "approval", "1", "Waiting", "@event:approved#1"]
    assert re.search(r"event approved \((59m|60m) left\)", row), row
    everywhere = ok(kflow(harness, "runs", "-A")).splitlines()
    assert everywhere[0].split()[0] == "NAMESPACE"
    assert any(line.split()[:2] == [runs.ns, "approve-me"] for line in everywhere[1:])

    waiting = ok(kflow(harness, "describe", "approve-me", "-n", runs.ns))
    assert re.search(r"^Phase: +Waiting$", waiting, re.M), waiting
    assert re.search(r"^Waiting: +event approved until \S+Z \((59m|60m) left\)$", waiting, re.M)
    assert re.search(r"^  @event:approved#1 +waiting +1 ", waiting, re.M), waiting

    # Bad JSON: refused before anything is sent.
    bad = kflow(harness, "event", "approve-me", "approved", "--data", "{by: ana}", "-n", runs.ns)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("error: --data is not JSON: Expecting property name")
    assert len(bad.stderr.splitlines()) == 1
    assert not any(k.startswith("event.kflow.io/") for k in runs.annotations("approve-me"))
    assert runs.status("approve-me")["phase"] == "Waiting"
    assert runs.status("approve-me").get("events", []) == []

    payload = tmp_path / "approval.json"
    payload.write_text('{\n  "by": "ana"\n}\n')
    file = str(payload)
    sent = ok(kflow(harness, "-n", runs.ns, "event", "approve-me", "approved", "--file", file))
    assert sent == "workflowrun.kflow.io/approve-me: event approved sent\n"
    assert runs.wait_phase("approve-me", "Completed")["output"] == "ana"
    assert lines(log) == ["approved-by-ana"]

    wait_for(
        lambda: "Completed" in ok(kflow(harness, "describe", "approve-me", "-n", runs.ns))
        .split("\nEvents:", 1)[1],
        what="the Completed Event in describe",
    )  # fmt: skip
    done = ok(kflow(harness, "describe", "approve-me", "-n", runs.ns))
    assert re.search(r"^Phase: +Completed$", done, re.M)
    assert re.search(r'^Output: +"ana"$', done, re.M)
    assert re.search(r"^  record +completed +1 +\S+Z +\S+Z +\d+(ms|\.\d\ds)$", done, re.M), done
    assert re.search(r"^  approved +consumed +by @event:approved#1$", done, re.M), done
    assert re.search(r"^  Succeeded +True +Completed ", done, re.M), done
    assert re.search(r"^  Normal +Completed +\S+ +kflow-operator ", done, re.M), done


def test_cancel_retire_and_retry(
    operator: Operator, runs: Runs, harness: Harness, tmp_path: Path
) -> None:
    saga, flaky, flag = tmp_path / "saga.log", tmp_path / "flaky.log", tmp_path / "flag"
    runs.apply("trip", "saga", {"log": str(saga)})
    runs.apply("stale", "approval", {"log": str(tmp_path / "stale.log")})
    runs.apply("flaky", "flaky", {"log": str(flaky), "flag": str(flag)})
    runs.wait_phase("trip", "Waiting")

    refused = kflow(harness, "retry", "trip", "-n", runs.ns)
    assert refused.returncode == 1
    assert refused.stderr == (
        "error: workflowrun trip is Waiting: only a Failed or Blocked run can be retried\n"
    )
    assert "kflow.io/retry" not in runs.annotations("trip")

    cancelled = ok(kflow(harness, "cancel", "trip", "--reason", "customer asked", "-n", runs.ns))
    assert cancelled == "workflowrun.kflow.io/trip: cancel requested\n"
    assert runs.wait_phase("trip", "Compensated")["error"] == "cancelled: customer asked"
    assert lines(saga) == ["reserve", "charge", "undo-charge", "undo-reserve"]
    again = kflow(harness, "cancel", "trip", "-n", runs.ns)
    assert again.returncode == 1
    assert again.stderr == "error: workflowrun trip is Compensated: there is nothing to cancel\n"

    runs.wait_phase("stale", "Waiting")
    ok(kflow(harness, "retire", "stale", "--reason", "superseded", "-n", runs.ns))
    assert runs.wait_phase("stale", "RetiredUnresumable")["error"] == "retired: superseded"

    assert "flag is not there yet" in runs.wait_phase("flaky", "Failed")["error"]
    flag.touch()
    assert ok(kflow(harness, "retry", "flaky", "-n", runs.ns)) == (
        "workflowrun.kflow.io/flaky: retry requested\n"
    )
    assert runs.wait_phase("flaky", "Completed")["output"] == "flag found"
    assert lines(flaky) == ["first"]  # the completed step did not run again


def test_an_unknown_run_is_named(harness: Harness, crds: None, namespace: str) -> None:
    for args in (["describe", "nope"], ["event", "nope", "go"], ["retry", "nope"]):
        result = kflow(harness, *args, "-n", namespace)
        assert result.returncode == 1, args
        assert result.stderr == f"error: workflowrun nope not found in namespace {namespace}\n"
    empty = kflow(harness, "runs", "-n", namespace)
    assert empty.returncode == 0 and empty.stdout == ""
    assert empty.stderr == f"No workflowruns found in namespace {namespace}.\n"


def test_missing_rights_name_the_refused_verb(
    harness: Harness, crds: None, namespace: str, runs: Runs
) -> None:
    runs.apply("guarded", "saga", {"log": "/dev/null"})  # no operator: it stays as applied

    denied = kflow(harness, "runs", "-n", namespace, user=NOBODY)
    assert denied.returncode == 1
    assert denied.stderr == (
        f'error: not allowed to list workflowruns.kflow.io in namespace "{namespace}" '
        f'(User "{NOBODY}" cannot list resource "workflowruns" in API group "kflow.io" '
        f'in the namespace "{namespace}")\n'
    )
    everywhere = kflow(harness, "runs", "-A", user=NOBODY)
    assert everywhere.returncode == 1
    assert everywhere.stderr.startswith(
        "error: not allowed to list workflowruns.kflow.io in all namespaces"
    )

    harness.run("kubectl", "create", "role", "run-viewer", "-n", namespace,
                "--verb=get,list", "--resource=workflowruns.kflow.io")  # fmt: skip
    harness.run("kubectl", "create", "rolebinding", "run-viewers", "-n", namespace,
                "--role=run-viewer", f"--group={VIEWERS_GROUP}")  # fmt: skip
    shown = wait_for(
        lambda: (r := kflow(harness, "describe", "guarded", "-n", namespace, user=VIEWER))
        .returncode == 0 and r.stdout,
        what="the viewer's new rights",
    )  # fmt: skip
    assert re.search(r"^Phase: +<none>: no operator has taken the run up yet$", shown, re.M)
    assert re.search(
        rf'^Events: +not shown: not allowed to list events in namespace "{namespace}"', shown, re.M
    ), shown
    cancel = kflow(harness, "cancel", "guarded", "-n", namespace, user=VIEWER)
    assert cancel.returncode == 1
    assert cancel.stderr.startswith(
        f'error: not allowed to patch workflowruns.kflow.io in namespace "{namespace}" '
        f'(User "{VIEWER}" cannot patch resource "workflowruns"'
    ), cancel.stderr
    assert "kflow.io/cancel" not in runs.annotations("guarded")


def test_bad_credentials_are_reported_and_never_printed(
    harness: Harness, crds: None, namespace: str, tmp_path: Path
) -> None:
    config = yaml.safe_load(harness.cluster.kubeconfig.read_text())
    admin_token = config["users"][0]["user"]["token"]
    config["users"][0]["user"]["token"] = "not-a-valid-token-0123456789"
    bogus = tmp_path / "kubeconfig"
    bogus.write_text(json.dumps(config))
    result = kflow(harness, "runs", "-n", namespace, kubeconfig=bogus)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: the API server at {harness.cluster.endpoint().server} refused the "
        "kubeconfig's credentials (401 Unauthorized)\n"
    )
    assert "not-a-valid-token" not in result.stderr + result.stdout
    admin = str(harness.cluster.kubeconfig)
    listed = kflow(harness, "runs", "-n", namespace, "--kubeconfig", admin, kubeconfig=bogus)
    assert listed.returncode == 0  # --kubeconfig wins over $KUBECONFIG, as in kubectl
    assert admin_token not in listed.stdout + listed.stderr


def test_manifest_applies_cleanly(harness: Harness, crds: None, namespace: str) -> None:
    printed = ok(kflow(harness, "manifest", "tests.e2e.workflows", "--image", "x"))
    applied = subprocess.run(
        ["kubectl", "apply", "-n", namespace, "-f", "-"], input=printed, env=harness.env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    registry = Registry.from_modules(["tests.e2e.workflows"])
    assert sorted(applied.stdout.splitlines()) == sorted(
        f"workflowdefinition.kflow.io/{d.name}-v{d.version} created" for d in registry.workflows()
    )
    stored = json.loads(
        harness.run("kubectl", "get", "wfdef", "approval-v1", "-n", namespace, "-o", "json").stdout
    )
    approval = registry.get("approval", 1)
    assert approval is not None
    assert stored["spec"] == {
        "workflow": "approval", "version": 1, "signature": approval.signature,
        "steps": ["record"], "events": ["approved"], "active": True, "executor": "pod",
        "template": {"image": "x", "modules": ["tests.e2e.workflows"]},
    }  # fmt: skip
