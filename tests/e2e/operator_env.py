"""What the operator e2e tests share: an operator process, kubectl for WorkflowRuns.

`Operator` runs ``kflow operator`` for one namespace, with the workflows of
``tests/e2e/workflows.py``; tests kill and restart it. `Runs` applies, reads and annotates
WorkflowRuns. The fixtures give each test both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client

from kflow._store import Store
from kflow.dev.postgres import free_port
from tests.e2e.conftest import Harness, wait_for

T = TypeVar("T")

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

    def in_store(self, work: Callable[[Store], Awaitable[T]]) -> T:
        """Run ``work`` on the operator's store (its DSN and schema), from the test."""

        async def go() -> T:
            store = await Store.open(self.env["KFLOW_DSN"], schema=self.env["KFLOW_SCHEMA"])
            try:
                return await work(store)
            finally:
                await store.close()

        return asyncio.run(go())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    @contextlib.contextmanager
    def running(self) -> Iterator[Operator]:
        """Started, then stopped; its log is printed (pytest shows it when a test fails)."""
        self.start()
        try:
            yield self
        finally:
            self.stop()
            print(f"--- operator log ({self.log}) ---\n{self.log.read_text()[-8000:]}")

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
    for crd in ("workflowdefinitions.kflow.io", "workflowruns.kflow.io"):
        harness.run("kubectl", "wait", "--for=condition=Established", f"crd/{crd}", "--timeout=30s")


@pytest.fixture
def operator(
    harness: Harness, crds: None, namespace: str, pg_dsn: str, tmp_path: Path
) -> Iterator[Operator]:
    op = Operator(harness, namespace, pg_dsn, tmp_path)
    with op.running():
        yield op


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
