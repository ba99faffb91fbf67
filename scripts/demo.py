"""The main job: kflow end to end on a local control plane, driven with kubectl.

Starts a Kubernetes control plane (``kflow.dev.cluster``: etcd, kube-apiserver,
controller-manager, scheduler, node stand-in) and a throw-away PostgreSQL, installs the
CRDs, runs the operator (with ``examples/orders/workflow.py`` for its inline executor),
then:

1. applies ``examples/orders/run.yaml`` — the order holds its stock 3 s (a durable
   timer), then waits for the payment event;
2. delivers the event with ``kubectl annotate``; the order ships (Completed);
3. applies a second order and cancels it with ``kubectl kflow cancel``; its stock is
   released by the durable compensation (Compensated);
4. runs the expense approval with the pod executor: a ``WorkflowDefinition`` resource (from
   ``kubectl kflow manifest``) sends its segments to Pods, one per segment, which the
   node stand-in runs; ``kubectl kflow event`` delivers the decision.

Every command is printed with its real output. Everything started is stopped at the end.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kflow.dev.cluster import LocalCluster, NodeStandIn, ensure_built  # noqa: E402
from kflow.dev.cluster.build import cache_root  # noqa: E402
from kflow.dev.postgres import LocalPostgres, free_port  # noqa: E402

ENV: dict[str, str] = {}


def sh(*args: str, check: bool = True, quiet: bool = False) -> str:
    if not quiet:
        print(f"\n$ {shlex.join(args)}")
    result = subprocess.run(args, env=ENV, capture_output=True, text=True, check=False)
    if not quiet:
        print((result.stdout + result.stderr).rstrip())
    if check and result.returncode != 0:
        raise SystemExit(f"demo: `{' '.join(args)}` failed")
    return result.stdout


def phase(name: str) -> str:
    out = sh("kubectl", "get", "wfr", name, "-o", "jsonpath={.status.phase}", quiet=True)
    return out.strip()


def wait_phase(name: str, wanted: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while phase(name) != wanted:
        if time.monotonic() > deadline:
            sh("kubectl", "get", "wfr", name, "-o", "yaml")
            raise SystemExit(f"demo: {name} did not reach {wanted} in {timeout:.0f}s")
        time.sleep(0.3)


def start_operator(dsn: str, log: Path) -> subprocess.Popen[bytes]:
    port = free_port()
    env = {
        **ENV,
        "PYTHONPATH": str(ROOT),
        "KFLOW_DSN": dsn,
        "KFLOW_NAMESPACES": '["default"]',
        "KFLOW_WORKFLOW_MODULES": '["examples.orders.workflow"]',
        "KFLOW_RUNNER_DSN_SECRET": "kflow-db",  # the Secret segment Pods read the DSN from
        "KFLOW_HEALTH_PORT": str(port),
        "KFLOW_METRICS_PORT": str(free_port()),
    }
    print(f"\n== starting the operator (log: {log})")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/kflow"), "operator"], env=env, cwd=ROOT,
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the operator exited:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return proc
        except OSError:
            time.sleep(0.3)
    raise SystemExit("demo: the operator did not become healthy")


def main() -> int:
    print("== building (first time only) and starting a local control plane + PostgreSQL")
    with LocalCluster(binaries=ensure_built(say=print)) as cluster, LocalPostgres() as pg:
        assert cluster.workdir is not None
        tools = cache_root() / "tools" / "bin"
        ENV.update(os.environ, KUBECONFIG=str(cluster.kubeconfig),
                   PATH=f"{tools}:{ROOT / '.venv/bin'}:{os.environ['PATH']}")  # fmt: skip
        with NodeStandIn(cluster.endpoint(), workdir=cluster.workdir / "pods"):
            sh("kubectl", "apply", "-f", str(ROOT / "crds"))
            sh("kubectl", "wait", "--for=condition=Established", "crd/workflowruns.kflow.io")
            print("\n$ kubectl create secret generic kflow-db --from-literal=dsn=...")
            sh("kubectl", "create", "secret", "generic", "kflow-db",
               f"--from-literal=dsn={pg.dsn}", quiet=True)  # fmt: skip
            operator = start_operator(pg.dsn, cluster.workdir / "operator.log")
            try:
                run_examples()
                return run_in_pods()
            finally:
                operator.terminate()
                operator.wait(timeout=20)


def run_examples() -> None:
    print("\n== 1. an order: hold the stock, wait for payment, ship")
    sh("kubectl", "apply", "-f", str(ROOT / "examples/orders/run.yaml"))
    time.sleep(1)
    sh("kubectl", "get", "wfr")
    wait_phase("order-42", "Waiting")
    deadline = time.monotonic() + 30
    waiting_for = ("kubectl", "get", "wfr", "order-42", "-o", "jsonpath={.status.waiting.event}")
    while "payment-confirmed" not in sh(*waiting_for, quiet=True):
        if time.monotonic() > deadline:
            raise SystemExit("demo: order-42 never waited for its payment")
        time.sleep(0.3)
    sh("kubectl", "get", "wfr")
    payment = json.dumps({"ref": "ch_1", "amount_cents": 2400})
    sh("kubectl", "annotate", "wfr", "order-42", f"event.kflow.io/payment-confirmed={payment}")
    wait_phase("order-42", "Completed")
    sh("kubectl", "get", "wfr")
    sh("kubectl", "describe", "wfr", "order-42")

    print("\n== 2. another order, cancelled: the durable compensation releases its stock")
    manifest = (ROOT / "examples/orders/run.yaml").read_text().replace("order-42", "order-43")
    subprocess.run(["kubectl", "apply", "-f", "-"], input=manifest, text=True, env=ENV,
                   check=True, capture_output=True)  # fmt: skip
    wait_phase("order-43", "Waiting")
    sh("kubectl", "kflow", "cancel", "order-43", "--reason", "customer changed their mind")
    wait_phase("order-43", "Compensated")
    sh("kubectl", "kflow", "runs")


def run_in_pods() -> int:
    print("\n== 3. an expense claim, each segment in a Pod of its own (the pod executor)")
    workflow = sh("kubectl", "kflow", "manifest", "examples.expense_approval.workflow",
                  "--image", "kflow:dev")  # fmt: skip
    # The node stand-in runs no images: its Pods use this checkout's Python and code.
    with_code = workflow.replace(
        "    modules:\n", f"    env:\n    - name: PYTHONPATH\n      value: {ROOT}\n    modules:\n"
    )
    subprocess.run(["kubectl", "apply", "-f", "-"], input=with_code, text=True, env=ENV,
                   check=True, capture_output=True)  # fmt: skip
    sh("kubectl", "get", "workflowdefinitions")
    time.sleep(1)  # the operator reads the Workflow from its watch
    sh("kubectl", "apply", "-f", str(ROOT / "examples/expense_approval/run.yaml"))
    wait_phase("expense-7", "Waiting")
    sh("kubectl", "get", "pods", "-l", "kflow.io/run")
    sh("kubectl", "kflow", "event", "expense-7", "decision",
       "--data", '{"approved": true, "by": "dana", "comment": "ok"}')  # fmt: skip
    wait_phase("expense-7", "Completed")
    sh("kubectl", "get", "pods", "-l", "kflow.io/run")
    sh("kubectl", "kflow", "describe", "expense-7")
    print("\nDEMO OK: order-42 Completed, order-43 Compensated, expense-7 Completed in Pods")
    return 0


if __name__ == "__main__":
    sys.exit(main())
