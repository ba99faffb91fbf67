"""``kubectl kflow``'s pure parts: formatting, arguments, payloads, manifests, errors.

Nothing here needs an API server; the one network call (to a closed port) checks how an
unreachable server is reported. The plugin against a real API server and operator is in
tests/e2e/test_plugin.py.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from kflow import WorkflowContext, workflow
from kflow.dev.postgres import free_port
from kflow.plugin import main
from kflow.plugin.api import Cluster, PluginError, context_namespace
from kflow.plugin.commands import build_parser, event_value, refusal
from kflow.plugin.manifest import (
    ManifestError,
    ManifestOptions,
    object_name,
    render_manifests,
    workflow_object,
)
from kflow.plugin.render import (
    describe,
    human_duration,
    runs_table,
    step_duration,
    table,
    waiting_summary,
)
from kflow.resources import WorkflowDefinitionSpec

NOW = datetime(2024, 5, 1, 10, 5, tzinfo=UTC)


@workflow(name="nightly", version=2, steps=["sweep"], events=["stop"],
          timeout=timedelta(seconds=90.5))  # fmt: skip
async def nightly(ctx: WorkflowContext, days: int) -> int:
    """A definition at the top of this module, so ``manifest`` can read the module."""
    return days


# -- formatting -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-5, "<invalid>"), (-0.5, "0s"), (0, "0s"), (59, "59s"), (119, "119s"), (120, "2m"),
        (150, "2m30s"), (600, "10m"), (179 * 60, "179m"), (3 * 3600, "3h"),
        (3 * 3600 + 300, "3h5m"), (8 * 3600, "8h"), (47 * 3600, "47h"), (2 * 86400, "2d"),
        (2 * 86400 + 3 * 3600, "2d3h"), (8 * 86400, "8d"), (729 * 86400, "729d"),
        (730 * 86400, "2y"), (740 * 86400, "2y10d"), (9 * 365 * 86400, "9y"),
    ],
)  # fmt: skip
def test_ages_read_like_kubectl_get(seconds: float, shown: str) -> None:
    assert human_duration(timedelta(seconds=seconds)) == shown


def test_step_durations() -> None:
    start = "2024-05-01T10:00:00Z"
    assert step_duration(start, "2024-05-01T10:00:00.012Z", NOW) == "12ms"
    assert step_duration(start, "2024-05-01T10:00:03.5Z", NOW) == "3.50s"
    assert step_duration(start, "2024-05-01T10:04:10Z", NOW) == "4m10s"
    assert step_duration(start, None, NOW) == "5m so far"
    assert step_duration(start, None, None) == ""  # the run is over: no clock runs
    assert step_duration(None, None, NOW) == ""


def test_waiting_summaries() -> None:
    event = {"kind": "event", "event": "paid", "until": "2024-05-01T11:04:59.2Z"}
    assert waiting_summary(event, NOW) == "event paid (60m left)"  # 59m59.2s, rounded up
    assert waiting_summary({"kind": "sleep", "until": "2024-05-01T10:05:00.3Z"}, NOW) == (
        "sleep (1s left)"  # rounded up: not "0s left" while time remains
    )
    assert waiting_summary({"kind": "retry", "until": "2024-05-01T10:04:00Z"}, NOW) == (
        "retry (due)"
    )
    assert waiting_summary({"kind": "event", "event": "go"}, NOW) == "event go"
    assert waiting_summary(None, NOW) == ""


def test_table_aligns_columns_three_spaces_apart() -> None:
    assert table(["A", "LONGER"], [["wide-cell", "x"], ["b", ""]], indent="  ") == (
        "  A           LONGER\n"
        "  wide-cell   x\n"
        "  b"
    )  # fmt: skip


def _run(name: str, namespace: str = "shop", status: dict[str, Any] | None = None) -> Any:
    run: dict[str, Any] = {
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}",
                     "creationTimestamp": "2024-05-01T10:00:00Z"},
        "spec": {"workflow": "order-fulfilment"},
    }  # fmt: skip
    if status is not None:
        run["status"] = status
    return run


def test_runs_table() -> None:
    waiting = {
        "phase": "Waiting", "workflowVersion": 2, "currentStep": "@event:paid#1",
        "waiting": {"kind": "event", "event": "paid", "until": "2024-05-01T11:05:00Z"},
    }  # fmt: skip
    runs = [_run("b", status=waiting), _run("a", "other"), _run("c", status={"phase": "Done"})]
    assert runs_table(runs, NOW, all_namespaces=False).splitlines() == [
        "NAME   WORKFLOW           VERSION   PHASE     STEP            WAITING                 AGE",
        "a      order-fulfilment                                                               5m",
        "b      order-fulfilment   2         Waiting   @event:paid#1   event paid (60m left)   5m",
        "c      order-fulfilment             Done                                              5m",
    ]
    everywhere = runs_table(runs, NOW, all_namespaces=True).splitlines()
    assert everywhere[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert [line.split()[:2] for line in everywhere[1:]] == [["other", "a"], ["shop", "b"],
                                                             ["shop", "c"]]  # fmt: skip


FULL_STATUS: dict[str, Any] = {
    "phase": "Waiting",
    "runId": "3f0c",
    "workflowVersion": 2,
    "signature": "ab" * 32,
    "currentStep": "@event:paid#1",
    "steps": [
        {"name": "reserve", "state": "completed", "attempts": 1,
         "startedAt": "2024-05-01T10:00:01Z", "completedAt": "2024-05-01T10:00:01.25Z"},
        {"name": "charge", "state": "completed", "attempts": 3,
         "startedAt": "2024-05-01T10:00:02Z", "completedAt": "2024-05-01T10:00:09Z",
         "error": "card declined\nretried"},
        {"name": "@event:paid#1", "state": "waiting", "attempts": 1,
         "startedAt": "2024-05-01T10:00:10Z"},
    ],
    "stepsOmitted": 4,
    "waiting": {"kind": "event", "event": "paid", "until": "2024-05-01T11:05:00Z"},
    "events": [
        {"name": "paid", "state": "rejected", "message": "payload is not JSON"},
        {"name": "note", "state": "pending"},
        {"name": "paid", "state": "consumed", "consumedBy": "@event:paid#0"},
    ],
    "executor": {"kind": "pod", "pod": "order-7-3f0c-s2", "message": "OOMKilled"},
    "output": {"big": "x" * 700},
    "conditions": [
        {"type": "Succeeded", "status": "Unknown", "reason": "Waiting",
         "lastTransitionTime": "2024-05-01T10:00:10Z"},
        {"type": "Waiting", "status": "True", "reason": "Event", "message": "event paid",
         "lastTransitionTime": "2024-05-01T10:00:10Z"},
    ],
}  # fmt: skip

KUBE_EVENTS = [
    {"type": "Warning", "reason": "SegmentFailed", "message": "OOMKilled", "count": 2,
     "firstTimestamp": "2024-05-01T10:01:00Z", "lastTimestamp": "2024-05-01T10:04:00Z",
     "source": {"component": "kflow-operator"}},
    {"type": "Warning", "reason": "EventRejected", "message": "event.kflow.io/paid: not JSON",
     "count": 1, "firstTimestamp": "2024-05-01T10:00:30Z",
     "lastTimestamp": "2024-05-01T10:00:30Z", "source": {"component": "kflow-operator"}},
]  # fmt: skip


def test_describe_shows_the_whole_status_and_the_events() -> None:
    text = describe(_run("order-7", status=FULL_STATUS), KUBE_EVENTS, NOW)
    output = json.dumps(FULL_STATUS["output"])
    expected = f"""\
Name:          order-7
Namespace:     shop
Workflow:      order-fulfilment v2 (signature abababababab)
Phase:         Waiting
Created:       2024-05-01T10:00:00Z (5m ago)
Run ID:        3f0c
Current step:  @event:paid#1
Waiting:       event paid until 2024-05-01T11:05:00Z (60m left)
Executor:      pod (segment Pod order-7-3f0c-s2)
               last failure: OOMKilled
Output:        {output[:600]}... ({len(output)} characters in all)
Steps:
  (4 earlier steps are not in the status)
  NAME            STATE       ATTEMPTS   STARTED                COMPLETED              DURATION
  reserve         completed   1          2024-05-01T10:00:01Z   2024-05-01T10:00:01Z   250ms
  charge          completed   3          2024-05-01T10:00:02Z   2024-05-01T10:00:09Z   7.00s
      error: card declined
      retried
  @event:paid#1   waiting     1          2024-05-01T10:00:10Z                          4m50s so far
Events delivered:
  NAME   STATE      DETAIL
  paid   rejected   payload is not JSON
  note   pending
  paid   consumed   by @event:paid#0
Conditions:
  TYPE        STATUS    REASON    SINCE   MESSAGE
  Succeeded   Unknown   Waiting   4m50s
  Waiting     True      Event     4m50s   event paid
Events:
  TYPE      REASON          AGE                FROM             MESSAGE
  Warning   EventRejected   4m30s              kflow-operator   event.kflow.io/paid: not JSON
  Warning   SegmentFailed   60s (x2 over 4m)   kflow-operator   OOMKilled"""
    assert text == expected


def test_describe_of_a_finished_run_and_of_a_run_no_operator_has_seen() -> None:
    done = {**FULL_STATUS, "phase": "Compensated", "waiting": None, "executor": None,
            "error": "cancelled: changed mind", "output": None,
            "outputTruncated": True}  # fmt: skip
    text = describe(_run("order-7", status=done), [], NOW)
    assert "\nError:         cancelled: changed mind\n" in text
    assert "\nOutput:        (too large for the status; it is stored in PostgreSQL)\n" in text
    assert "Waiting:" not in text and "Executor:" not in text
    # The cut-short wait does not keep counting once the run is over.
    assert "\n  @event:paid#1   waiting     1          2024-05-01T10:00:10Z\n" in text
    assert text.endswith("\nEvents:        <none>")

    fresh = describe(_run("new"), None, NOW, events_refused="not allowed to list events (...)")
    assert "\nPhase:         <none>: no operator has taken the run up yet\n" in fresh
    assert "\nSteps:         <none>\nEvents delivered: <none>\nConditions:    <none>\n" in fresh
    assert fresh.endswith("\nEvents:        not shown: not allowed to list events (...)")


# -- arguments, payloads, refusals ---------------------------------------------------------


def test_common_options_go_before_or_after_the_command() -> None:
    parser = build_parser()
    before = parser.parse_args(["-n", "ns", "--context", "c", "describe", "r"])
    after = parser.parse_args(["describe", "r", "--namespace", "ns", "--context", "c"])
    for args in (before, after):
        assert (args.command, args.run) == ("describe", "r")
        assert (args.namespace, args.context) == ("ns", "c")
    bare = parser.parse_args(["runs", "-A"])
    assert bare.all_namespaces and not hasattr(bare, "namespace")  # -> the context's
    event = parser.parse_args(["event", "r", "paid", "--data", "{}"])
    assert (event.run, event.name, event.data, event.file) == ("r", "paid", "{}", None)
    assert parser.parse_args(["cancel", "r"]).reason == ""
    manifest = parser.parse_args(["manifest", "m", "--image", "i", "--executor", "inline"])
    assert (manifest.module, manifest.image, manifest.executor) == ("m", "i", "inline")


@pytest.mark.parametrize(
    "argv",
    [
        [], ["event", "r"], ["event", "r", "e", "--data", "1", "--file", "f"],
        ["manifest", "m", "--executor", "elsewhere"], ["retry"], ["runs", "--bogus"],
    ],
)  # fmt: skip
def test_bad_arguments_exit_with_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args(argv)
    assert exit.value.code == 2
    assert "usage: kubectl kflow" in capsys.readouterr().err


def test_event_payloads() -> None:
    assert event_value(None, "--data") == ""  # no payload: null, an empty annotation
    assert event_value(" null ", "--data") == ""
    assert event_value('{\n  "by": "ana",  "n": [1, 2]\n}', "f.json") == '{"by":"ana","n":[1,2]}'
    assert event_value('"née"', "--data") == '"née"'
    with pytest.raises(PluginError, match=r"^--data is not JSON: Expecting property name .*col"):
        event_value("{by: ana}", "--data")
    with pytest.raises(PluginError, match=r"^pay\.json is not JSON: Expecting value"):
        event_value("", "pay.json")


ONLY_FAILED = "only a Failed or Blocked run can be retried"


@pytest.mark.parametrize(
    ("verb", "phase", "why"),
    [
        ("retry", "Failed", None), ("retry", "BlockedMissingHandler", None),
        ("retry", "Waiting", f"workflowrun r is Waiting: {ONLY_FAILED}"),
        ("retry", None, f"workflowrun r is not started: {ONLY_FAILED}"),
        ("cancel", "Waiting", None), ("cancel", None, None),
        ("retire", "BlockedMissingHandler", None),
        ("cancel", "Compensated", "workflowrun r is Compensated: there is nothing to cancel"),
        ("retire", "Completed", "workflowrun r is Completed: there is nothing to retire"),
        ("event", "Running", None), ("event", None, None),
        ("event", "Failed", "workflowrun r is Failed: it takes no more events"),
    ],
)  # fmt: skip
def test_pointless_actions_are_refused_before_sending(
    verb: str, phase: str | None, why: str | None
) -> None:
    assert refusal(verb, "r", phase) == why


def test_the_namespace_comes_from_the_context() -> None:
    contexts = [{"name": "a", "context": {"namespace": "team-a"}}, {"name": "b", "context": {}}]
    assert context_namespace(contexts, contexts[0], None) == "team-a"
    assert context_namespace(contexts, contexts[0], "b") == "default"
    assert context_namespace(contexts, None, None) == "default"


def _kubeconfig(path: Path, server: str, namespace: str | None = None) -> Path:
    context: dict[str, str] = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "main",
        "clusters": [{"name": "c",
                      "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "s3cret-token-value"}}],
        "contexts": [{"name": "main", "context": context},
                     {"name": "plain", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip
    return path


def test_connect_reads_the_namespace_like_kubectl(tmp_path: Path) -> None:
    config = str(_kubeconfig(tmp_path / "config", "https://127.0.0.1:1", "team-a"))

    def namespace(context: str | None, given: str | None) -> str:
        return Cluster.connect(kubeconfig=config, context=context, namespace=given).namespace

    assert namespace(None, None) == "team-a"
    assert namespace("plain", None) == "default"
    assert namespace(None, "x") == "x"
    with pytest.raises(PluginError, match="cannot use the kubeconfig"):
        namespace("missing", None)


def test_an_unreachable_api_server_is_one_line_without_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens there
    config = str(_kubeconfig(tmp_path / "config", f"https://127.0.0.1:{port}"))
    assert main(["runs", "--kubeconfig", config]) == 1
    out = capsys.readouterr()
    assert out.err == (
        f"error: cannot reach the API server at https://127.0.0.1:{port}: Connection refused\n"
    )
    assert out.out == "" and "s3cret" not in out.err

    # Bad JSON is refused before any call: the error is about the payload, not the server.
    assert main(["event", "r", "go", "--data", "[1,", "--kubeconfig", config]) == 1
    assert capsys.readouterr().err.startswith("error: --data is not JSON: ")


def test_a_missing_kubeconfig_and_a_missing_payload_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs", "--kubeconfig", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err.startswith(f"error: cannot use the kubeconfig ({tmp_path}/nope)")
    config = str(_kubeconfig(tmp_path / "config", "https://127.0.0.1:1"))
    missing = str(tmp_path / "p.json")
    assert main(["event", "r", "go", "--file", missing, "--kubeconfig", config]) == 1
    assert capsys.readouterr().err == f"error: cannot read {missing}: No such file or directory\n"
    assert main(["event", "r", "bad/name", "--kubeconfig", config]) == 1
    assert capsys.readouterr().err.startswith("error: invalid event name 'bad/name'")


# -- manifest ---------------------------------------------------------------------------------


def test_object_names_are_valid_kubernetes_names() -> None:
    assert object_name("order-fulfilment", 3) == "order-fulfilment-v3"
    assert object_name("Nightly_Report", 1) == "nightly-report-v1"
    assert object_name("a.-b..c.", 2) == "a.b.c-v2"


def test_a_workflow_object_carries_the_code_contract() -> None:
    plain = workflow_object(nightly, ManifestOptions(module="tests.unit.test_plugin"))
    assert plain == {
        "apiVersion": "kflow.io/v1alpha1", "kind": "WorkflowDefinition",
        "metadata": {"name": "nightly-v2"},
        "spec": {"workflow": "nightly", "version": 2, "signature": nightly.signature,
                 "steps": ["sweep"], "events": ["stop"], "active": True,
                 "timeoutSeconds": 91},  # rounded up to whole seconds
    }  # fmt: skip
    pods = workflow_object(nightly, ManifestOptions(
        module="jobs.nightly", image="reg/jobs:1", service_account="runner", namespace="ops",
        active=False,
    ))  # fmt: skip
    assert pods["metadata"] == {"name": "nightly-v2", "namespace": "ops"}
    assert pods["spec"]["executor"] == "pod"  # an image means Pods
    assert pods["spec"]["active"] is False
    assert pods["spec"]["template"] == {
        "image": "reg/jobs:1", "modules": ["jobs.nightly"], "serviceAccountName": "runner",
    }  # fmt: skip
    inline = workflow_object(nightly, ManifestOptions(module="m", image="i", executor="inline"))
    assert inline["spec"]["executor"] == "inline"


def test_manifest_prints_yaml_the_crd_model_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["manifest", "tests.unit.test_plugin", "--image", "reg/jobs:1", "-n", "ops"]) == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["metadata"] for d in documents] == [{"name": "nightly-v2", "namespace": "ops"}]
    WorkflowDefinitionSpec.model_validate(documents[0]["spec"])


def test_manifest_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "broken_defs.py").write_text("raise RuntimeError('no database here')\n")
    (tmp_path / "empty_defs.py").write_text("X = 1\n")
    cases = {
        "no_such_module_xyz": "cannot import module 'no_such_module_xyz': No module named "
        "'no_such_module_xyz'",
        "broken_defs": "importing module 'broken_defs' failed: RuntimeError: no database here",
        "empty_defs": "module 'empty_defs' defines no @workflow at its top level",
    }
    for module, message in cases.items():
        with pytest.raises(ManifestError) as failed:
            render_manifests(ManifestOptions(module=module))
        assert str(failed.value) == message
    with pytest.raises(ManifestError, match=r"has no workflow 'other' \(it has: nightly\)"):
        render_manifests(ManifestOptions(module="tests.unit.test_plugin"), "other")
    with pytest.raises(ManifestError, match="--executor pod needs --image"):
        render_manifests(ManifestOptions(module="tests.unit.test_plugin", executor="pod"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # main adds the working directory
    assert main(["manifest", "no_such_module_xyz"]) == 1
    assert capsys.readouterr().err == (
        "error: cannot import module 'no_such_module_xyz': No module named 'no_such_module_xyz'\n"
    )
