"""What ``bench/operator_throughput.py`` drives the API server with, and how it counts CPU.

- `Api`: an aiohttp client for WorkflowRuns (create, status and annotation patches,
  deletion) and namespaces, as the admin of a `kflow.dev.cluster.LocalCluster`. aiohttp
  because the client must not be the bottleneck: on a 2-core machine httpx costs about ten
  times its client CPU per request.
- `PhaseWatch`: one watch on a namespace that records when each object's
  ``status.phase`` changed, as the client saw it.
- `Process`: an operator subprocess (kflow's or the kopf baseline) with a health URL.
- `cpu_seconds`: CPU used by a process and its descendants, from ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from kflow.controller.kube import event_body
from kflow.dev.cluster import ApiEndpoint

__all__ = ["Api", "PhaseWatch", "Process", "cpu_seconds"]

Obj = dict[str, Any]
RUNS = "/apis/kflow.io/v1alpha1/namespaces/{ns}/workflowruns"
_LABEL = re.compile(r'(\w+)="([^"]*)"')


class Api:
    """The benchmark's Kubernetes client: at most ``concurrency`` requests in flight."""

    def __init__(self, endpoint: ApiEndpoint, *, concurrency: int = 32) -> None:
        self._base = endpoint.server
        tls = ssl.create_default_context(cafile=str(endpoint.ca_file))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls, limit=concurrency + 4),
            headers={"Authorization": f"Bearer {endpoint.token}"},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            read_bufsize=2**20,
        )
        self._slots = asyncio.Semaphore(concurrency)

    async def close(self) -> None:
        await self._session.close()

    async def request(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json"
    ) -> Obj:
        data = None if body is None else json.dumps(body).encode()
        async with (
            self._slots,
            self._session.request(
                method, self._base + path, data=data, headers={"Content-Type": content_type}
            ) as response,
        ):
            payload: Obj = await response.json(content_type=None)
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: {response.status} {payload.get('message')}")
            return payload

    async def create_namespace(self, ns: str) -> None:
        await self.request("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})

    async def create_run(self, ns: str, name: str, workflow: str, input: Obj) -> Obj:
        body = {
            "apiVersion": "kflow.io/v1alpha1", "kind": "WorkflowRun",
            "metadata": {"name": name}, "spec": {"workflow": workflow, "input": input},
        }  # fmt: skip
        return await self.request("POST", RUNS.format(ns=ns), body)

    async def merge_patch(self, ns: str, name: str, body: Obj, *, status: bool = False) -> Obj:
        path = f"{RUNS.format(ns=ns)}/{name}" + ("/status" if status else "")
        return await self.request("PATCH", path, body, content_type="application/merge-patch+json")

    async def annotate(self, ns: str, name: str, key: str, value: str) -> Obj:
        return await self.merge_patch(ns, name, {"metadata": {"annotations": {key: value}}})

    async def post_event(self, ns: str, name: str, uid: str, reason: str, message: str) -> Obj:
        """A Kubernetes Event on a WorkflowRun, the body kflow's operator posts."""
        body = event_body(namespace=ns, name=name, uid=uid, type="Normal", reason=reason,
                          message=message)  # fmt: skip
        return await self.request("POST", f"/api/v1/namespaces/{ns}/events", body)

    async def list_runs(self, ns: str) -> Obj:
        return await self.request("GET", RUNS.format(ns=ns))

    async def delete_all(self, ns: str) -> None:
        """Delete every WorkflowRun of ``ns`` (finalizers removed first: no operator runs
        any more) and the namespace itself."""
        items = (await self.list_runs(ns))["items"]
        await asyncio.gather(
            *(
                self.merge_patch(ns, o["metadata"]["name"], {"metadata": {"finalizers": None}})
                for o in items
                if o["metadata"].get("finalizers")
            )
        )
        await self.request("DELETE", RUNS.format(ns=ns))
        await self.request("DELETE", f"/api/v1/namespaces/{ns}")

    async def requests_served(self) -> dict[str, float]:
        """The API server's own count of requests served so far, by ``VERB resource``
        (``apiserver_request_total``; a watch counts once, when it starts)."""
        async with self._session.get(self._base + "/metrics") as response:
            text = await response.text()
        counts: dict[str, float] = {}
        for line in text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels = dict(_LABEL.findall(line))
            sub = f"/{labels['subresource']}" if labels.get("subresource") else ""
            key = f"{labels.get('verb')} {labels.get('resource')}{sub}"
            counts[key] = counts.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        return counts

    async def watch_lines(self, path: str, resource_version: str) -> Any:
        """The raw events of one watch request, as decoded JSON objects."""
        params = {"watch": "1", "resourceVersion": resource_version}
        async with self._session.get(self._base + path, params=params) as response:
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)


@dataclass
class PhaseWatch:
    """When each WorkflowRun of a namespace was seen in each ``status.phase`` (wall clock,
    ``time.time()``), from one watch started before the objects exist."""

    api: Api
    ns: str
    history: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    writes: int = 0
    """Watch events seen (ADDED, MODIFIED): every write to any of the objects."""
    reconnects: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        listed = await self.api.list_runs(self.ns)
        rv = listed["metadata"]["resourceVersion"]
        self._task = asyncio.create_task(self._follow(rv))

    async def _follow(self, rv: str) -> None:
        """Follow the namespace, reconnecting from the last version seen when the server
        ends the watch, and listing again when that version is too old."""
        while True:
            async for event in self.api.watch_lines(RUNS.format(ns=self.ns), rv):
                if event["type"] == "ERROR":  # e.g. 410 Gone: the version is too old
                    listed = await self.api.list_runs(self.ns)
                    for obj in listed["items"]:
                        self._seen(obj)
                    rv = listed["metadata"]["resourceVersion"]
                    break
                rv = event["object"]["metadata"]["resourceVersion"]
                if event["type"] != "DELETED":
                    self.writes += 1
                    self._seen(event["object"])
            self.reconnects += 1

    def _seen(self, obj: Obj) -> None:
        phase = (obj.get("status") or {}).get("phase")
        if phase is None:
            return
        seen = self.history.setdefault(obj["metadata"]["name"], [])
        if not seen or seen[-1][1] != phase:
            seen.append((time.time(), phase))
            self.counts[phase] = self.counts.get(phase, 0) + 1
            self._changed.set()

    def first(self, name: str, phase: str, *, after: float = 0.0) -> float | None:
        """When ``name`` was first seen in ``phase`` at or after ``after``."""
        return next((t for t, p in self.history.get(name, []) if p == phase and t >= after), None)

    async def until(self, phase: str, count: int, *, timeout: float) -> None:
        """Wait until ``count`` objects have been seen reaching ``phase``."""
        deadline = time.monotonic() + timeout
        while self.counts.get(phase, 0) < count:
            if self._task is not None and self._task.done():
                self._task.result()
                raise RuntimeError(f"the watch on {self.ns} ended")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{self.ns}: {self.counts.get(phase, 0)}/{count} reached {phase} "
                    f"in {timeout:.0f}s (phases seen: {self.counts})"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(left, 1.0))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class Process:
    """A subprocess with a health URL: started, awaited healthy, stopped by its own pid."""

    def __init__(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str], health: str, log: Path
    ) -> None:
        self.name, self.argv, self.env, self.health, self.log = name, argv, env, health, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, *, timeout: float = 60) -> Process:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                list(self.argv), env=dict(self.env), stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(self.health, timeout=1):
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} not healthy in {timeout:.0f}s (log: {self.log})")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its reaped children)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is the state (stat field 3): ppid is field 4, utime..cstime fields 14-17.
    return int(fields[1]), sum(int(f) for f in fields[11:15]) / _TICK


def cpu_seconds(roots: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each named process and its live descendants."""
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() if (s := _stat(int(p)))}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    result = {}
    for name, root in roots.items():
        total, todo = 0.0, [root]
        while todo:
            pid = todo.pop()
            if pid in stats:
                total += stats[pid][1]
                todo.extend(children.get(pid, []))
        result[name] = total
    return result
