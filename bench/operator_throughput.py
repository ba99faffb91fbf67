"""Operator throughput and latency: kflow against raw API writes and a minimal kopf operator.

    .venv/bin/python bench/operator_throughput.py [--runs 500] [--events 200]
        [--sleepers 1000] [--repeat 3] [--profile DIR] [--operator-env KEY=VALUE ...]

Starts a local control plane (``kflow.dev.cluster``, API server and etcd only) and a
throw-away PostgreSQL, installs the CRDs, then measures, in fresh namespaces, each
operator started fresh for its scenario:

- **throughput**: ``--runs`` WorkflowRuns created through the API server, timed until the
  watch shows every one finished, for
  (a) raw writes: create + 1 status patch per object from this (aiohttp) client, no operator;
  (b) ``bench/kopf_minimal.py``: kopf marking each object ``phase: Done``;
  (c) kflow: 3 no-op steps per run (``bench/workflows.py``), until ``phase: Completed``;
  (d) kflow's writes made raw: create, finalizer, one real kflow status, one Event, with
  two watches open (the floor of the API server's work for kflow's runs);
  with the CPU each process used per object (operator, API server, etcd, PostgreSQL,
  client) and the requests the API server served, by verb and resource;
- **event latency**: ``--events`` runs wait for event ``go``; one annotation
  ``event.kflow.io/go`` every ``1/--event-rate`` s; from the annotate request to the watch
  seeing ``Completed``;
- **timer lateness**: ``--sleepers`` runs all sleep until one wake time (``--sleep-lead``
  seconds after the first is created); from that time to the watch seeing each resume
  (first phase other than Waiting) and complete.

Throughput figures are medians of ``--repeat`` rounds (the three kinds interleaved);
latencies are pooled over ``--latency-repeat`` rounds. ``--profile DIR`` adds one unmeasured kflow
throughput round under py-spy and prints where the operator's CPU goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
# This checkout's code, also when the installed kflow is another checkout's (a worktree).
sys.path[:0] = [str(ROOT / "operator"), str(ROOT)]

from bench.harness import Api, PhaseWatch, Process, cpu_seconds  # noqa: E402
from bench.pyspy_summary import summarize  # noqa: E402

from kflow.dev.cluster import LocalCluster, ensure_built  # noqa: E402
from kflow.dev.cluster.build import cache_root  # noqa: E402
from kflow.dev.postgres import LocalPostgres, free_port  # noqa: E402

EVENT_KEY = "event.kflow.io/go"
FINALIZER = "kflow.io/finalizer"
Obj = dict[str, Any]


@dataclass
class Bench:
    """What every scenario shares: the servers, the client, the options."""

    cluster: LocalCluster
    pg: LocalPostgres
    api: Api
    args: argparse.Namespace
    workdir: Path
    status_sample: Obj | None = None  # a Completed run's status, from a kflow round

    def namespace(self, kind: str) -> str:
        return f"{kind}-{uuid.uuid4().hex[:6]}"

    def servers(self) -> dict[str, int]:
        postmaster = int((self.pg.datadir / "postmaster.pid").read_text().split()[0])
        pids = self.cluster.pids
        return {"apiserver": pids["apiserver"], "etcd": pids["etcd"], "postgres": postmaster}

    def env(self) -> dict[str, str]:
        tools = cache_root() / "tools" / "bin"
        return {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "PATH": f"{tools}:{ROOT / '.venv/bin'}:{os.environ['PATH']}",
            "PYTHONPATH": f"{ROOT / 'operator'}:{ROOT}",
        }

    def kflow(self, ns: str, *, profile: Path | None = None) -> Process:
        port = free_port()
        env = {
            **self.env(),
            "KFLOW_DSN": self.pg.dsn,
            "KFLOW_SCHEMA": f"kflow_{ns.replace('-', '_')}",
            "KFLOW_NAMESPACES": json.dumps([ns]),
            "KFLOW_WORKFLOW_MODULES": json.dumps(["bench.workflows"]),
            "KFLOW_HEALTH_PORT": str(port),
            **dict(kv.split("=", 1) for kv in self.args.operator_env),
        }
        argv = [sys.executable, "-m", "kflow.cli", "operator"]
        if profile is not None:
            spy = str(Path(sys.executable).with_name("py-spy"))
            argv = [spy, "record", "--nonblocking", "--format", "raw", "-o", str(profile),
                    "--", *argv]  # fmt: skip
        return Process(
            "kflow operator", argv, env=env, log=self.workdir / f"{ns}.log",
            health=f"http://127.0.0.1:{port}/healthz",
        )  # fmt: skip

    def kopf(self, ns: str) -> Process:
        port = free_port()
        argv = [
            sys.executable, "-m", "kopf", "run", "--standalone", "-n", ns,
            f"--liveness=http://127.0.0.1:{port}/healthz", str(ROOT / "bench/kopf_minimal.py"),
        ]  # fmt: skip
        return Process(
            "kopf baseline", argv, env=self.env(), log=self.workdir / f"{ns}.log",
            health=f"http://127.0.0.1:{port}/healthz",
        )  # fmt: skip


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))]


# -- throughput ------------------------------------------------------------------------


@dataclass
class Throughput:
    rate: float
    cpu_ms: dict[str, float]  # CPU per object, by process
    writes: float  # API writes per object (create, patches), from the watch
    requests: dict[str, float] | None = None  # requests served per object, by verb+resource


@dataclass
class Meter:
    """What a scenario costs, from `start` on: wall time, CPU by process (``roots`` and
    their children) and of this client, and the requests the API server served."""

    b: Bench
    roots: dict[str, int]
    served: dict[str, float]
    client: float
    cpu: dict[str, float]
    began: float
    elapsed: float = 0.0

    @classmethod
    async def start(cls, b: Bench, roots: dict[str, int]) -> Meter:
        served = await b.api.requests_served()
        return cls(b, roots, served, time.process_time(), cpu_seconds(roots), time.perf_counter())

    def stop(self, m: int) -> dict[str, float]:
        """Record the wall time; CPU ms per object by process, and the client's."""
        self.elapsed = time.perf_counter() - self.began
        now = cpu_seconds(self.roots)
        cpu = {name: (now[name] - before) / m * 1000 for name, before in self.cpu.items()}
        cpu["client"] = (time.process_time() - self.client) / m * 1000
        return cpu

    async def requests(self, m: int) -> dict[str, float]:
        """Requests served per object since `start`, by verb and resource (>= 0.05)."""
        after = await self.b.api.requests_served()
        per_object = {k: (n - self.served.get(k, 0.0)) / m for k, n in after.items()}
        return {k: n for k, n in per_object.items() if n >= 0.05}


async def raw_writes(b: Bench, m: int) -> Throughput:
    ns = b.namespace("raw")
    await b.api.create_namespace(ns)

    async def one(i: int) -> None:
        await b.api.create_run(ns, f"r{i}", "bench-three", {})
        await b.api.merge_patch(ns, f"r{i}", {"status": {"phase": "Done"}}, status=True)

    meter = await Meter.start(b, b.servers())
    await asyncio.gather(*(one(i) for i in range(m)))
    cpu = meter.stop(m)
    await b.api.delete_all(ns)
    return Throughput(m / meter.elapsed, cpu, writes=2.0)


async def shaped_writes(b: Bench, m: int, status: Obj) -> Throughput:
    """Raw writes of kflow's shape: what the API server must do per run whatever the
    operator costs (create; finalizer; one status PATCH of a real kflow status; one Event),
    with the two watches the operator scenarios have (the benchmark's, the operator's)."""
    ns = b.namespace("shaped")
    await b.api.create_namespace(ns)
    watches = [PhaseWatch(b.api, ns) for _ in range(2)]
    for watch in watches:
        await watch.start()

    async def one(i: int) -> None:
        created = await b.api.create_run(ns, f"r{i}", "bench-three", {})
        meta = created["metadata"]
        await b.api.merge_patch(ns, f"r{i}", {"metadata": {"finalizers": [FINALIZER]}})
        await b.api.merge_patch(ns, f"r{i}", {"status": {**status, "runId": meta["uid"]}},
                                status=True)  # fmt: skip
        await b.api.post_event(ns, f"r{i}", meta["uid"], "Completed", "run Completed")

    meter = await Meter.start(b, b.servers())
    await asyncio.gather(*(one(i) for i in range(m)))
    cpu = meter.stop(m)
    requests = await meter.requests(m)
    for watch in watches:
        await watch.stop()
    await b.api.delete_all(ns)
    return Throughput(m / meter.elapsed, cpu, writes=4.0, requests=requests)


@contextlib.asynccontextmanager
async def _scenario(
    b: Bench, label: str, operator: Callable[[str], Process]
) -> AsyncIterator[tuple[str, Process, PhaseWatch]]:
    """A fresh namespace, its operator process and a phase watch, all removed after."""
    ns = b.namespace(label)
    await b.api.create_namespace(ns)
    proc = operator(ns).start()
    watch = PhaseWatch(b.api, ns)
    await watch.start()
    try:
        yield ns, proc, watch
    finally:
        proc.stop()
        await watch.stop()
        await b.api.delete_all(ns)


async def operator_run(b: Bench, kind: str, m: int, *, profile: Path | None = None) -> Throughput:
    """``m`` objects through an operator (``kind``: kopf or kflow) until all are done."""
    done = "Done" if kind == "kopf" else "Completed"

    def operator(ns: str) -> Process:
        return b.kopf(ns) if kind == "kopf" else b.kflow(ns, profile=profile)

    async with _scenario(b, kind, operator) as (ns, proc, watch):
        meter = await Meter.start(b, {**b.servers(), "operator": proc.pid})
        await asyncio.gather(*(b.api.create_run(ns, f"r{i}", "bench-three", {}) for i in range(m)))
        await watch.until(done, m, timeout=60 + m / 5)
        cpu = meter.stop(m)
        await asyncio.sleep(1.0)  # writes that follow the last phase change count too
        writes = watch.writes / m
        requests = await meter.requests(m)
        if watch.reconnects:
            print(f"  ({ns}: the watch was reconnected {watch.reconnects} time(s))")
        if kind == "kflow":
            b.status_sample = (await b.api.list_runs(ns))["items"][0]["status"]
    return Throughput(m / meter.elapsed, cpu, writes, requests)


# -- latency ---------------------------------------------------------------------------


async def event_latency(b: Bench, n: int, rate: float) -> list[float]:
    """Seconds from each ``annotate`` request to ``Completed`` seen on the watch."""
    async with _scenario(b, "events", b.kflow) as (ns, _, watch):
        await asyncio.gather(*(b.api.create_run(ns, f"e{i}", "bench-event", {}) for i in range(n)))
        await watch.until("Waiting", n, timeout=60 + n / 5)
        await asyncio.sleep(1.0)  # let the last coalesced status writes land
        sent: dict[str, float] = {}
        tasks = []
        for i in range(n):
            sent[f"e{i}"] = time.time()
            tasks.append(asyncio.create_task(b.api.annotate(ns, f"e{i}", EVENT_KEY, "{}")))
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)
        await watch.until("Completed", n, timeout=60)
        return [_seen(watch, name, "Completed", after=t) - t for name, t in sent.items()]


def _seen(watch: PhaseWatch, name: str, phase: str, *, after: float) -> float:
    t = watch.first(name, phase, after=after)
    if t is None:
        raise RuntimeError(f"{name} was never seen {phase} after {after}")
    return t


@dataclass
class Lateness:
    resumed: list[float]
    completed: list[float]
    parked_before_wake: int  # runs seen Waiting before the wake time
    parked_in: float  # seconds from the first create to the last run parked (or the wake)


async def timer_lateness(b: Bench, n: int, lead: float) -> Lateness:
    async with _scenario(b, "timers", b.kflow) as (ns, _, watch):
        start = time.time()
        wake = start + lead
        at = datetime.fromtimestamp(wake, UTC).isoformat()
        await asyncio.gather(
            *(b.api.create_run(ns, f"s{i}", "bench-sleep", {"at": at}) for i in range(n))
        )
        await watch.until("Completed", n, timeout=lead + 120)
        # A run not parked by its wake time never shows Waiting: it did not sleep.
        parked = [watch.first(f"s{i}", "Waiting", after=start) or wake for i in range(n)]
        resumed = []
        for i in range(n):
            after = [t for t, phase in watch.history[f"s{i}"] if t >= wake and phase != "Waiting"]
            resumed.append(min(after) - wake)
        completed = [_seen(watch, f"s{i}", "Completed", after=wake) - wake for i in range(n)]
        before = sum(t < wake for t in parked)
        return Lateness(resumed, completed, before, max(parked) - start)


# -- the run ---------------------------------------------------------------------------


async def bench(b: Bench) -> None:
    a = b.args
    say = print
    say(f"warm-up: {min(a.runs, 100)} raw writes")
    await raw_writes(b, min(a.runs, 100))
    rounds: dict[str, list[Throughput]] = {"raw": [], "kopf": [], "kflow": [], "shaped": []}
    for r in range(a.repeat):
        for kind in rounds:
            if kind == "raw":
                t = await raw_writes(b, a.runs)
            elif kind == "shaped":
                assert b.status_sample is not None
                t = await shaped_writes(b, a.runs, b.status_sample)
            else:
                t = await operator_run(b, kind, a.runs)
            rounds[kind].append(t)
            say(f"round {r + 1}: {kind:5} {t.rate:6.0f} objects/s")
    events: list[float] = []
    lateness: list[Lateness] = []
    for r in range(a.latency_repeat):
        if a.events:
            events += await _said(
                f"round {r + 1}: events", event_latency(b, a.events, a.event_rate)
            )
        if a.sleepers:
            lead = a.sleep_lead or 5 + a.sleepers / 25
            lateness.append(
                await _said(f"round {r + 1}: timers", timer_lateness(b, a.sleepers, lead))
            )
    report(rounds, events, lateness, a)
    if a.profile:
        a.profile.mkdir(parents=True, exist_ok=True)
        raw = a.profile / "kflow-throughput.txt"
        say(f"\nprofiling one more kflow round (py-spy, not measured) -> {raw}")
        await operator_run(b, "kflow", a.runs, profile=raw)
        print(summarize(raw))


async def _said(what: str, work: Awaitable[Any]) -> Any:
    start = time.perf_counter()
    result = await work
    print(f"{what} done in {time.perf_counter() - start:.1f}s")
    return result


def report(
    rounds: dict[str, list[Throughput]],
    events: list[float],
    lateness: list[Lateness],
    a: argparse.Namespace,
) -> None:
    med = {k: statistics.median(t.rate for t in v) for k, v in rounds.items()}
    names = {
        "raw": "(a) raw writes: create + 1 status patch",
        "kopf": "(b) minimal kopf operator: mark done",
        "kflow": "kflow: 3-step runs to Completed",
        "shaped": "(d) kflow's writes, raw, 2 watches",
    }
    print(f"\n{a.runs} objects, median of {a.repeat} round(s) [min-max]")
    print(f"{'':42} {'objects/s':>9} {'range':>11} {'kflow/this':>10}")
    for kind, title in names.items():
        rates = [t.rate for t in rounds[kind]]
        span = f"{min(rates):.0f}-{max(rates):.0f}"
        print(f"{title:42} {med[kind]:9.0f} {span:>11} {med['kflow'] / med[kind]:10.2f}")
    print("\nper object (median over rounds): API writes, CPU ms by process")
    procs = ["operator", "apiserver", "etcd", "postgres", "client"]
    print(f"{'':42} {'writes':>6} " + " ".join(f"{p:>9}" for p in procs))
    for kind, title in names.items():
        writes = statistics.median(t.writes for t in rounds[kind])
        cols = [statistics.median(t.cpu_ms.get(p, 0.0) for t in rounds[kind]) for p in procs]
        print(f"{title:42} {writes:6.1f} " + " ".join(f"{c:9.2f}" for c in cols))
    print("\nAPI requests served per object (last round; >= 0.05)")
    for kind, title in names.items():
        served = rounds[kind][-1].requests
        if served:
            listed = ", ".join(f"{k} {n:.2f}" for k, n in sorted(served.items()))
            print(f"{title:42} {listed}")
    rows: list[tuple[str, list[float]]] = []
    if events:
        rows.append((f"event -> Completed ({len(events)}, {a.event_rate:g}/s)", events))
    if lateness:
        rows.append(("timer -> resumed", [x for la in lateness for x in la.resumed]))
        rows.append(("timer -> Completed", [x for la in lateness for x in la.completed]))
    if rows:
        print(f"\n{'latency (s)':42} {'p50':>7} {'p99':>7} {'max':>7}")
        for title, values in rows:
            print(f"{title:42} {pct(values, 50):7.3f} {pct(values, 99):7.3f} {max(values):7.3f}")
    for la in lateness:
        print(
            f"timers: {la.parked_before_wake}/{len(la.resumed)} parked before the wake time "
            f"(all Waiting {la.parked_in:.1f}s after the first create)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=500, help="objects per throughput round")
    parser.add_argument("--events", type=int, default=200, help="0: skip")
    parser.add_argument("--event-rate", type=float, default=20.0, help="annotations per second")
    parser.add_argument("--sleepers", type=int, default=1000, help="0: skip")
    parser.add_argument("--sleep-lead", type=float, help="seconds (default 5 + sleepers/25)")
    parser.add_argument("--repeat", type=int, default=3, help="throughput rounds")
    parser.add_argument("--latency-repeat", type=int, default=1, help="event and timer rounds")
    parser.add_argument("--profile", type=Path, help="directory for a py-spy profile")
    parser.add_argument(
        "--operator-env", action="append", default=[], metavar="KEY=VALUE",
        help="extra environment for the kflow operator (e.g. KFLOW_STATUS_INTERVAL=0.1)",
    )  # fmt: skip
    args = parser.parse_args()
    crds = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml"))]
    binaries = ensure_built(say=print)
    # Only the API server and etcd: no controller or kubelet competes for the 2 cores.
    cluster = LocalCluster(binaries=binaries, controller_manager=False, scheduler=False)
    with cluster, LocalPostgres() as pg:
        assert cluster.workdir is not None
        print(f"control plane and PostgreSQL up; logs in {cluster.workdir}")
        asyncio.run(_main(cluster, pg, args, crds, cluster.workdir))


async def _main(
    cluster: LocalCluster,
    pg: LocalPostgres,
    args: argparse.Namespace,
    crds: list[dict[str, Any]],
    workdir: Path,
) -> None:
    api = Api(cluster.endpoint())
    try:
        for crd in crds:
            await install_crd(api, crd)
        await bench(Bench(cluster, pg, api, args, workdir))
    finally:
        await api.close()


async def install_crd(api: Api, crd: dict[str, Any], *, timeout: float = 30) -> None:
    """Create a CRD and wait until the API server serves it (Established)."""
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    await api.request("POST", path, crd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await api.request("GET", f"{path}/{crd['metadata']['name']}")
        conditions = (got.get("status") or {}).get("conditions") or []
        if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"CRD {crd['metadata']['name']} not Established in {timeout:.0f}s")


if __name__ == "__main__":
    main()
