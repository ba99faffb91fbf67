"""helm installs a chart; the real scheduler places its Pods; the node stand-in runs them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from kubernetes import client

from tests.e2e.conftest import CHARTS, Harness, wait_for


def test_helm_chart_runs_to_completion(
    harness: Harness, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    harness.run("helm", "install", "hello", CHARTS / "hello", "-n", namespace,
                "--set", f"outputDir={out}", "--wait", "--timeout", "90s",
                timeout=120)  # fmt: skip

    # The Deployment's Pod: scheduled, running, Ready (helm --wait saw it available).
    apps = client.AppsV1Api(api)
    deployment = apps.read_namespaced_deployment("hello-web", namespace)
    assert deployment.status.available_replicas == 1
    core = client.CoreV1Api(api)
    (web,) = core.list_namespaced_pod(namespace, label_selector="app=hello-web").items
    assert web.spec.node_name == "kflow-node-stand-in"
    selector = f"involvedObject.name={web.metadata.name},reason=Scheduled"
    events = wait_for(lambda: core.list_namespaced_event(namespace, field_selector=selector).items,
                      what="the scheduler's event")  # fmt: skip
    assert events[0].reporting_component == "default-scheduler"
    record = json.loads(wait_for(lambda: _read(out / f"{web.metadata.name}.json")))
    assert record["POD_UID"] == web.metadata.uid
    assert record["GREETING"] == "hello from a ConfigMap"
    assert record["PASSWORD"] == "s3cr3t-hello"
    assert record["NODE_NAME"] == "kflow-node-stand-in"
    assert record["SERVICE_ACCOUNT"] == "default"
    assert os.path.exists(f"/proc/{record['pid']}")

    # The Job's Pod ran to completion, reading itself through the API as its service account.
    batch = client.BatchV1Api(api)
    wait_for(lambda: batch.read_namespaced_job("hello-check", namespace).status.succeeded,
             timeout=60, what="the Job to succeed")  # fmt: skip
    (check,) = core.list_namespaced_pod(namespace, label_selector="job-name=hello-check").items
    assert check.status.phase == "Succeeded"
    seen = json.loads((out / f"{check.metadata.name}.json").read_text())
    assert seen["uid_from_api"] == seen["uid_from_env"] == check.metadata.uid

    # Uninstalling deletes the Deployment; the garbage collector deletes its Pod, and the
    # node stand-in stops the process.
    harness.run("helm", "uninstall", "hello", "-n", namespace, "--wait", "--timeout", "60s")
    wait_for(lambda: not os.path.exists(f"/proc/{record['pid']}"), timeout=60,
             what="the web process to stop")  # fmt: skip


def _read(path: Path) -> str | None:
    try:
        return path.read_text() or None
    except FileNotFoundError:
        return None
