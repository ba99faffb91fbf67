"""Segment overhead of the pod executor against the inline one, on the local control plane.

    .venv/bin/python bench/pod_overhead.py [--runs 20] [--warmup 2]

The pod executor starts a Pod (a fresh ``kflow runner`` process) for every segment, where
the inline executor runs the segment in the operator's own event loop. This measures what
that costs a run before its first step, and to its end: ``--runs`` 1-step no-op runs per
executor (``bench/pod_workflows.py``), one at a time (latency, not throughput), the two
executors interleaved so that drift of the machine hits both alike, each timed

- from **dispatch** (the client's ``time.time()`` just before POSTing the WorkflowRun)
- to the run's **first step recorded** in PostgreSQL (``steps.completed_at``, written by
  whichever process ran the step), and
- to the WorkflowRun seen **Completed** on a watch.

Every timestamp is this machine's wall clock (client, operator and runner share it), so
they compare directly. Each run is also broken down into milestones: the run row created by
the operator (``runs.created_at``), for pod runs the segment Pod seen created, bound to the
node by the scheduler and started by the node stand-in (from a Pod watch), the lease taken
by the segment's executor (``runs.started_at``), the step, the run's outcome recorded
(``runs.completed_at``), the runner's last output (its log file's mtime), the Pod seen
Succeeded. Last, the runner's fixed cost is timed outside Kubernetes: the interpreter
alone, with the runner's imports (with and without the interpreter's teardown of them at
exit), and a whole ``kflow runner`` process for a run that does not exist (connect, schema
check, one UPDATE, exit) and for a 1-step segment.

Starts its own control plane (``kflow.dev.cluster``: API server, etcd, controller-manager
and scheduler, plus the node stand-in that runs Pods as local processes), PostgreSQL, and
operator, and stops them all on exit. The node stand-in is not a container runtime: a real
cluster adds image pulls, container creation and a kubelet's own latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import Api, PhaseWatch, Process  # noqa: E402
from bench.operator_throughput import install_crd, pct  # noqa: E402

from kflow._engine import Engine  # noqa: E402
from kflow._store import Store  # noqa: E402
from kflow._workflow import Registry  # noqa: E402
from kflow.dev.cluster import LocalCluster, NodeStandIn, ensure_built  # noqa: E402
from kflow.dev.cluster.build import cache_root  # noqa: E402
from kflow.dev.postgres import LocalPostgres, free_port  # noqa: E402
from kflow.plugin.manifest import ManifestOptions, workflow_object  # noqa: E402

MODULE = "bench.pod_workflows"
WORKFLOW = {"pod": "bench-one-pod", "inline": "bench-one-inline"}
KINDS = ("inline", "pod")
SECRET = "kflow-db"
SCHEMA = "kflow_pod_overhead"
RUN_LABEL = "kflow.io/run"

# Milestones of a run, in the order they happen, as offsets from its dispatch.
MILESTONES = {
    "posted": "WorkflowRun created (POST answered)",
    "run_row": "run row inserted by the operator",
    "pod_created": "segment Pod seen created",
    "pod_bound": "Pod seen bound to the node",
    "pod_started": "runner process seen started",
    "leased": "lease taken (runs.started_at)",
    "step_started": "first step started",
    "step_recorded": "first step recorded",
    "outcome": "run outcome recorded (runs.completed_at)",
    "runner_done": "runner's last output (its log's mtime)",
    "pod_ended": "Pod seen Succeeded",
    "completed": "WorkflowRun seen Completed",
}
POD_ONLY = {"pod_created", "pod_bound", "pod_started", "runner_done", "pod_ended"}


@dataclass
class PodWatch:
    """When each run's first segment Pod was first seen created, bound to a node, with its
    container started, and ended (client wall clock), by the run's uid; one watch on a
    namespace, started before the Pods exist."""

    api: Api
    ns: str
    marks: dict[str, dict[str, float]] = field(default_factory=dict)
    phases: dict[str, str] = field(default_factory=dict)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The last version of each run's Pod seen."""
    _task: asyncio.Task[None] | None = None

    @property
    def _path(self) -> str:
        return f"/api/v1/namespaces/{self.ns}/pods"

    async def start(self) -> None:
        listed = await self.api.request("GET", self._path)
        self._task = asyncio.create_task(self._follow(listed["metadata"]["resourceVersion"]))

    async def _follow(self, rv: str) -> None:
        while True:  # the server ends watches now and then: resume from the last version
            async for event in self.api.watch_lines(self._path, rv):
                if event["type"] == "ERROR":  # 410 Gone: the version is too old
                    listed = await self.api.request("GET", self._path)
                    for pod in listed["items"]:
                        self._seen(pod)
                    rv = listed["metadata"]["resourceVersion"]
                    break
                rv = event["object"]["metadata"]["resourceVersion"]
                if event["type"] != "DELETED":
                    self._seen(event["object"])

    def _seen(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        run = (meta.get("labels") or {}).get(RUN_LABEL)
        if run is None or (meta.get("labels") or {}).get("kflow.io/segment") != "1":
            return  # a retried segment would be a failure, reported by the run's phase
        now = time.time()
        self.last[run] = pod
        marks = self.marks.setdefault(run, {})
        marks.setdefault("pod_created", now)
        if (pod.get("spec") or {}).get("nodeName"):
            marks.setdefault("pod_bound", now)
        status = pod.get("status") or {}
        states = [set(c.get("state") or {}) for c in status.get("containerStatuses") or []]
        if any({"running", "terminated"} & s for s in states):
            marks.setdefault("pod_started", now)
        if status.get("phase") in ("Succeeded", "Failed"):
            marks.setdefault("pod_ended", now)
            self.phases[run] = status["phase"]

    async def ended(self, run: str, *, timeout: float = 10) -> dict[str, float]:
        """The run's Pod marks, once its end was seen (the run's own watch may be ahead)."""
        deadline = time.monotonic() + timeout
        while "pod_ended" not in self.marks.get(run, {}):
            if self._task is not None and self._task.done():
                self._task.result()
                raise RuntimeError(f"the Pod watch on {self.ns} ended")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Pod of run {run} not seen ending: {self.marks.get(run)}")
            await asyncio.sleep(0.02)
        if self.phases[run] != "Succeeded":
            raise RuntimeError(f"the Pod of run {run} ended {self.phases[run]}")
        return self.marks[run]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


@dataclass
class Bench:
    api: Api
    db: asyncpg.Connection
    ns: str
    runs: PhaseWatch
    pods: PodWatch
    node: NodeStandIn
    completed: int = 0

    async def one(self, kind: str, name: str) -> dict[str, float]:
        """Dispatch one run and wait for it to complete; its milestones (s after dispatch)."""
        t0 = time.time()
        created = await self.api.create_run(self.ns, name, WORKFLOW[kind], {})
        marks = {"posted": time.time()}
        uid = created["metadata"]["uid"]
        await self.runs.until("Completed", self.completed + 1, timeout=120)
        self.completed += 1
        done = self.runs.first(name, "Completed")
        assert done is not None
        marks["completed"] = done
        row = await self.db.fetchrow(
            f"""SELECT r.created_at, r.started_at, r.completed_at, s.started_at AS step_started,
                       s.completed_at AS step_recorded
                FROM {SCHEMA}.runs r, LATERAL (
                    SELECT started_at, completed_at FROM {SCHEMA}.steps
                    WHERE run_id = r.run_id ORDER BY seq LIMIT 1) s
                WHERE r.run_id = $1""",
            uuid.UUID(uid),
        )
        if row is None:
            raise RuntimeError(f"{name}: no run or no step in PostgreSQL")
        marks["run_row"] = row["created_at"].timestamp()
        marks["leased"] = row["started_at"].timestamp()
        marks["step_started"] = row["step_started"].timestamp()
        marks["step_recorded"] = row["step_recorded"].timestamp()
        marks["outcome"] = row["completed_at"].timestamp()
        if kind == "pod":
            marks.update(await self.pods.ended(uid))
            # The runner prints its outcome as its last act: the log's last write is when
            # its process was about to exit (the stand-in reaps it on a 0.1 s tick).
            log = self.node.pod_dir(self.pods.last[uid]) / "runner.log"
            marks["runner_done"] = log.stat().st_mtime
        return {k: t - t0 for k, t in marks.items()}


async def measure(b: Bench, runs: int, warmup: int) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}
    for i in range(warmup + runs):
        for kind in KINDS:
            marks = await b.one(kind, f"{kind}-{i}")
            if i >= warmup:
                results[kind].append(marks)
            else:
                print(f"warm-up {kind:6}: first step {marks['step_recorded']:.3f}s, "
                      f"Completed {marks['completed']:.3f}s")  # fmt: skip
            await asyncio.sleep(0.3)  # the run's trailing writes (status, Event) settle
        if i >= warmup and (i - warmup + 1) % 5 == 0:
            print(f"{i - warmup + 1}/{runs} runs per executor done")
    return results


# -- the runner's fixed cost, outside Kubernetes -----------------------------------------


def timed(argvs: Sequence[Sequence[str]], env: dict[str, str], *, ok: int = 0) -> float:
    """Median wall time of the commands, run one after another in a scratch directory."""
    times = []
    with tempfile.TemporaryDirectory() as cwd:
        for argv in argvs:
            start = time.perf_counter()
            done = subprocess.run(list(argv), env=env, cwd=cwd, capture_output=True)
            times.append(time.perf_counter() - start)
            if done.returncode != ok:
                raise RuntimeError(f"{argv} exited {done.returncode}: {done.stderr.decode()}")
    return statistics.median(times)


async def runner_costs(dsn: str, repeat: int) -> dict[str, float]:
    """What a segment Pod's process costs by itself: each command ``repeat`` times."""
    schema = f"{SCHEMA}_solo"  # runs no operator knows of
    store = await Store.open(dsn, schema=schema)
    engine = Engine(store, Registry.from_modules([MODULE]))
    try:
        ids = [str((await engine.start(WORKFLOW["pod"], {})).run_id) for _ in range(repeat)]
    finally:
        await engine.close()
        await store.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KFLOW_DSN": dsn, "KFLOW_SCHEMA": schema,
           "KFLOW_WORKFLOW_MODULES": json.dumps([MODULE])}  # fmt: skip
    python, runner = sys.executable, [sys.executable, "-m", "kflow.cli", "runner", "--run"]
    imports = f"import os, kflow.cli, kflow.runner, {MODULE}"

    def costs() -> dict[str, float]:
        return {
            "python -c pass": timed([[python, "-c", "pass"]] * repeat, env),
            # os._exit skips the interpreter's teardown of those modules, timed next.
            "the runner's imports, then os._exit": timed(
                [[python, "-c", f"{imports}; os._exit(0)"]] * repeat, env
            ),
            "the runner's imports, then a normal exit": timed(
                [[python, "-c", imports]] * repeat, env
            ),
            "kflow runner, no such run (exit 5)": timed(
                [[*runner, str(uuid.uuid4())] for _ in range(repeat)], env, ok=5
            ),
            "kflow runner, a 1-step segment": timed([[*runner, i] for i in ids], env),
        }

    return await asyncio.to_thread(costs)


# -- report --------------------------------------------------------------------------------


def median(runs: list[dict[str, float]], key: str, since: str | None = None) -> float:
    """Median (nearest rank, as in the first table) over runs of milestone ``key``, after
    dispatch or after milestone ``since``."""
    return pct([m[key] - (m[since] if since else 0.0) for m in runs], 50)


def report(results: dict[str, list[dict[str, float]]], costs: dict[str, float]) -> None:
    n = len(results["pod"])
    print(f"\n{n} sequential 1-step runs per executor, seconds from dispatch")
    head = " ".join(f"{q:>6}" for q in ("p50", "p95", "max"))
    print(f"{'':32} {'inline':>20}   {'pod':>20}   {'pod / inline':>20}")
    print(f"{'':32} {head}   {head}   {head}")
    for key, title in (("step_recorded", "-> first step recorded"), ("completed", "-> Completed")):
        cols = {k: [pct([m[key] for m in results[k]], q) for q in (50, 95, 100)] for k in KINDS}
        ratio = [p / i for p, i in zip(cols["pod"], cols["inline"], strict=True)]
        print(f"{title:32} "
              + " ".join(f"{v:6.3f}" for v in cols["inline"]) + "   "
              + " ".join(f"{v:6.3f}" for v in cols["pod"]) + "   "
              + " ".join(f"{v:5.1f}x" for v in ratio))  # fmt: skip
    print("\nmilestones, median s after dispatch (pod: + median step from the previous one)")
    print(f"{'':42} {'inline':>7} {'pod':>7} {'+step':>7}")
    previous: str | None = None
    for key, title in MILESTONES.items():
        inline = "" if key in POD_ONLY else f"{median(results['inline'], key):7.3f}"
        step = "" if previous is None else f"{median(results['pod'], key, previous):+7.3f}"
        print(f"{title:42} {inline:>7} {median(results['pod'], key):7.3f} {step:>7}")
        previous = key
    print("\nthe runner's fixed cost, outside Kubernetes (median wall time, s)")
    for title, seconds in costs.items():
        print(f"{title:42} {seconds:7.3f}")


# -- setup -------------------------------------------------------------------------------


async def prepare(api: Api, ns: str, dsn: str) -> None:
    """The namespace (once its service account can be used), the DSN Secret and the
    `WorkflowDefinition` resource that sends ``bench-one-pod`` to Pods."""
    await api.create_namespace(ns)
    deadline = time.monotonic() + 60
    # On 1.20 the ServiceAccount admission plugin refuses Pods until the tokens controller
    # has given the namespace's default account its token Secret.
    while True:
        with contextlib.suppress(RuntimeError):  # 404 until the controller made it
            account = await api.request("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/default")
            if account.get("secrets"):
                break
        if time.monotonic() > deadline:
            raise TimeoutError(f"no default service account with a token in {ns}")
        await asyncio.sleep(0.2)
    secret = {"metadata": {"name": SECRET}, "stringData": {"dsn": dsn}}
    await api.request("POST", f"/api/v1/namespaces/{ns}/secrets", secret)
    d = Registry.from_modules([MODULE]).active(WORKFLOW["pod"])
    assert d is not None
    manifest = workflow_object(d, ManifestOptions(module=MODULE, image="kflow:dev"))
    # The node stand-in runs no images: the Pods run this checkout's Python.
    manifest["spec"]["template"].update(
        command=[sys.executable, "-m", "kflow.cli"],
        env=[{"name": "PYTHONPATH", "value": str(ROOT)}],
    )
    await api.request(
        "POST", f"/apis/kflow.io/v1alpha1/namespaces/{ns}/workflowdefinitions", manifest
    )


def operator(cluster: LocalCluster, ns: str, dsn: str, log: Path) -> Process:
    port = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "PATH": f"{cache_root() / 'tools' / 'bin'}:{ROOT / '.venv/bin'}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "KFLOW_DSN": dsn,
        "KFLOW_SCHEMA": SCHEMA,
        "KFLOW_NAMESPACES": json.dumps([ns]),
        "KFLOW_WORKFLOW_MODULES": json.dumps([MODULE]),  # for the inline runs
        "KFLOW_RUNNER_DSN_SECRET": SECRET,
        "KFLOW_HEALTH_PORT": str(port),
        "KFLOW_METRICS_PORT": str(free_port()),
        "KFLOW_STATUS_INTERVAL": "0.2",
    }
    argv = [sys.executable, "-m", "kflow.cli", "operator"]
    return Process("kflow operator", argv, env=env, log=log,
                   health=f"http://127.0.0.1:{port}/healthz")  # fmt: skip


async def bench(
    cluster: LocalCluster, node: NodeStandIn, pg: LocalPostgres, args: argparse.Namespace
) -> None:
    assert cluster.workdir is not None
    api = Api(cluster.endpoint(), concurrency=4)
    db: asyncpg.Connection | None = None
    proc: Process | None = None
    watches: list[PhaseWatch | PodWatch] = []
    log = cluster.workdir / "operator.log"
    try:
        for path in sorted((ROOT / "crds").glob("*.yaml")):
            await install_crd(api, yaml.safe_load(path.read_text()))
        ns = f"pods-{uuid.uuid4().hex[:6]}"
        await prepare(api, ns, pg.dsn)
        proc = operator(cluster, ns, pg.dsn, log).start()
        runs, pods = PhaseWatch(api, ns), PodWatch(api, ns)
        for watch in (runs, pods):
            await watch.start()
            watches.append(watch)
        db = await asyncpg.connect(pg.dsn)
        load0 = os.getloadavg()[0]
        results = await measure(Bench(api, db, ns, runs, pods, node), args.runs, args.warmup)
        load1 = os.getloadavg()[0]
        costs = await runner_costs(pg.dsn, args.repeat)
        print(f"\n{len(os.sched_getaffinity(0))} CPUs; load average {load0:.2f} before the runs, "
              f"{load1:.2f} after")  # fmt: skip
        report(results, costs)
    except Exception:
        if log.exists():
            print(f"--- operator log (tail) ---\n{log.read_text()[-6000:]}", file=sys.stderr)
        raise
    finally:
        for watch in watches:
            await watch.stop()
        if db is not None:
            await db.close()
        if proc is not None:
            proc.stop()
        await api.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="measured runs per executor")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured runs per executor")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each fixed-cost command")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so every server started below is stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    binaries = ensure_built(say=print)
    cluster = LocalCluster(binaries=binaries)  # the scheduler and tokens controller: Pods
    try:
        with cluster, LocalPostgres() as pg:
            assert cluster.workdir is not None
            with NodeStandIn(cluster.endpoint(), workdir=cluster.workdir / "pods") as node:
                print(f"control plane, node stand-in and PostgreSQL up; logs in {cluster.workdir}")
                asyncio.run(bench(cluster, node, pg, args))
    except KeyboardInterrupt:  # everything above is stopped by now
        sys.exit("interrupted")


if __name__ == "__main__":
    main()
