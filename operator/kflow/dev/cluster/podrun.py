"""One Pod's life on the node stand-in: its containers as local processes, its status.

A `PodRunner` thread configures the Pod (environment, credentials), runs its init
containers one after another and then its containers side by side, each in its own process
group with output in ``<pod dir>/<container>.log``, restarts them as ``restartPolicy`` says
(with a kubelet's back-off, 10 s doubling to 5 min), enforces ``activeDeadlineSeconds``, and
writes phase, conditions and container states to the Pod's status subresource. On deletion
it sends SIGTERM to each process group, SIGKILL after the grace period, then deletes the Pod
object with grace 0, as a kubelet does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kflow.dev.cluster.podenv import (
    PodConfigError,
    command_line,
    container_env,
    mount_volumes,
    translate,
    write_credentials,
)
from kflow.dev.cluster.rest import ApiError, Obj, Rest

__all__ = ["PodRunner"]

log = logging.getLogger("kflow.dev.cluster.node")
_TICK = 0.1
_BACKOFF_START, _BACKOFF_MAX = 10.0, 300.0
_DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Container:
    spec: Obj
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    restarts: int = 0
    restart_at: float | None = None  # monotonic time of the next start, when backing off

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def status(self) -> Obj:
        return {
            "name": self.name, "image": self.spec.get("image", ""), "imageID": "",
            "containerID": f"standin://{self.proc.pid}" if self.proc else "",
            "ready": "running" in self.state, "started": "running" in self.state,
            "restartCount": self.restarts, "state": self.state, "lastState": self.last_state,
        }  # fmt: skip


class PodRunner:
    """Runs one Pod, in a thread of its own, until it ends, is deleted, or the stand-in stops."""

    def __init__(self, rest: Rest, pod: Obj, *, pod_dir: Path, ca_file: Path, path: str) -> None:
        meta = pod["metadata"]
        self.rest, self.pod, self.pod_dir, self.ca_file = rest, pod, pod_dir, ca_file
        self.path = path  # prepended to PATH: the project's Python environment
        self.api_path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        self.uid = str(meta["uid"])
        self.key = f"{meta['namespace']}/{meta['name']}"
        self._thread = threading.Thread(target=self._main, name=f"pod-{self.key}", daemon=True)
        self.spec: Obj = pod["spec"]
        self.policy = str(self.spec.get("restartPolicy", "Always"))
        self.init = [_Container(c, pod_dir / f"{c['name']}.log")
                     for c in self.spec.get("initContainers") or []]  # fmt: skip
        self.main = [_Container(c, pod_dir / f"{c['name']}.log") for c in self.spec["containers"]]
        self.started_at = now()
        self._started_mono = time.monotonic()
        self._delete = threading.Event()
        self._lock = threading.Lock()
        self._done = False  # set under _lock when the thread ends: no more deletes taken
        self._deleted = False
        self._grace = 30.0
        self._shutdown = threading.Event()
        self._env: dict[str, dict[str, str]] = {}
        self._argv: dict[str, list[str]] = {}
        self.phase = "Pending"
        self.reason: str | None = None
        self.message = ""

    # -- called from other threads ---------------------------------------------------------

    def request_delete(self, grace: float) -> bool:
        """The Pod has a deletionTimestamp: stop its processes within `grace` seconds, then
        delete the object. False if this runner has already finished: the caller deletes."""
        with self._lock:
            if self._done:
                return False
            self._grace = min(self._grace, grace) if self._delete.is_set() else grace
            self._delete.set()
            return True

    def shutdown(self) -> None:
        """The stand-in stops: kill the processes quickly and leave the API alone."""
        self._shutdown.set()

    def has_container(self, name: str) -> bool:
        return any(c.name == name for c in [*self.init, *self.main])

    def running(self, name: str) -> bool:
        """Whether container `name` runs now or will again (a restart is pending)."""
        return self.is_alive() and any(
            c.name == name and ((c.proc is not None and c.proc.poll() is None) or c.restart_at)
            for c in [*self.init, *self.main]
        )

    def pids(self) -> list[int]:
        return [c.proc.pid for c in [*self.init, *self.main] if c.proc and c.proc.poll() is None]

    # -- the Pod's life --------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _main(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("node stand-in: pod %s failed", self.key)
            self._kill_all(grace=1)
        with self._lock:
            self._done = True
        if self._delete.is_set() and not self._deleted:  # asked while the Pod was ending
            self._finish_deleted()

    def _run(self) -> None:
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        if not self._configure():
            self._finish_deleted()
            return
        for c in self.init:
            self._start(c)
            while c.proc is not None and c.proc.poll() is None and not self._interrupted():
                self._shutdown.wait(_TICK)
            if self._interrupted():
                self._finish_deleted()
                return
            if c.proc is not None:
                self._exited(c)
            self._report()
            if c.state["terminated"]["exitCode"] != 0:
                self._end("Failed", "InitContainerFailed", f"init container {c.name} failed")
                return
        for c in self.main:
            self._start(c)
        self.phase = "Running"
        self._report()
        deadline = self.spec.get("activeDeadlineSeconds")
        while not self._interrupted():
            if deadline is not None and time.monotonic() - self._started_mono > float(deadline):
                self._kill_all(grace=self._termination_grace())
                self._end("Failed", "DeadlineExceeded", _DEADLINE_MESSAGE)
                return
            changed = False
            for c in self.main:
                if c.proc is not None and c.proc.poll() is not None and "running" in c.state:
                    self._exited(c)
                    changed = True
                if c.restart_at is not None and time.monotonic() >= c.restart_at:
                    c.restart_at = None
                    c.restarts += 1
                    self._start(c)
                    changed = True
            if all("terminated" in c.state and c.restart_at is None for c in self.main):
                failed = any(c.state["terminated"]["exitCode"] != 0 for c in self.main)
                self._end("Failed" if failed else "Succeeded", None, "")
                return
            if changed:
                self._report()
            self._shutdown.wait(_TICK)
        self._finish_deleted()

    def _interrupted(self) -> bool:
        return self._delete.is_set() or self._shutdown.is_set()

    def _configure(self) -> bool:
        """Credentials and every container's environment; retried while a kubelet would."""
        base = {
            "PATH": f"{self.path}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.pod_dir), "HOSTNAME": self.pod["metadata"]["name"],
            "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1",
            "KUBERNETES_SERVICE_HOST": self.rest.endpoint.host,
            "KUBERNETES_SERVICE_PORT": str(self.rest.endpoint.port),
        }  # fmt: skip
        while not self._interrupted():
            try:
                kubeconfig = write_credentials(
                    self.rest, self.pod, pod_dir=self.pod_dir, ca_file=self.ca_file
                )
                if kubeconfig is not None:
                    base["KUBECONFIG"] = str(kubeconfig)
                for c in [*self.init, *self.main]:
                    env = container_env(self.rest, self.pod, container=c.spec, base=base)
                    mounts = mount_volumes(
                        self.rest, self.pod, container=c.spec, pod_dir=self.pod_dir
                    )
                    env = {k: translate(v, mounts) for k, v in env.items()}
                    # Fails early on a missing command, as a kubelet's config step does.
                    self._argv[c.name] = [translate(a, mounts) for a in command_line(c.spec, env)]
                    self._env[c.name] = env
                return True
            except PodConfigError as e:
                for c in [*self.init, *self.main]:
                    c.state = {"waiting": {"reason": "CreateContainerConfigError",
                                           "message": str(e)}}  # fmt: skip
                self._report()
                self._shutdown.wait(2)
        return False

    def _start(self, c: _Container) -> None:
        env = self._env[c.name]
        workdir = c.spec.get("workingDir")
        cwd = workdir if workdir and Path(workdir).is_dir() else self.pod_dir
        with c.log.open("ab") as out:
            try:
                c.proc = subprocess.Popen(
                    self._argv[c.name], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            except OSError as e:  # as containerd reports an executable it cannot run
                c.state = {"terminated": {
                    "exitCode": 128, "reason": "StartError", "message": str(e),
                    "startedAt": now(), "finishedAt": now(),
                }}  # fmt: skip
                return
        c.state = {"running": {"startedAt": now()}}

    def _exited(self, c: _Container) -> None:
        assert c.proc is not None
        code = c.proc.wait()
        started = c.state.get("running", {}).get("startedAt", self.started_at)
        c.state = {"terminated": {
            "exitCode": code if code >= 0 else 128 - code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": started, "finishedAt": now(),
            "containerID": f"standin://{c.proc.pid}",
        }}  # fmt: skip
        if self.policy == "Always" or (self.policy == "OnFailure" and code != 0):
            c.last_state = c.state
            delay = min(_BACKOFF_START * 2**c.restarts, _BACKOFF_MAX)
            c.restart_at = time.monotonic() + delay
            c.state = {"waiting": {"reason": "CrashLoopBackOff", "message":
                       f"back-off {delay:.0f}s restarting failed container={c.name}"}}  # fmt: skip

    def _termination_grace(self) -> float:
        return float(self.spec.get("terminationGracePeriodSeconds", 30))

    def _kill_all(self, *, grace: float) -> None:
        """SIGTERM every live process group, SIGKILL whatever outlives `grace` seconds."""
        live = [c for c in [*self.init, *self.main] if c.proc and c.proc.poll() is None]
        for c in live:
            assert c.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(c.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(c.proc and c.proc.poll() is None for c in live):
            if time.monotonic() >= deadline:
                for c in live:
                    assert c.proc is not None
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(c.proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        for c in live:
            assert c.proc is not None
            c.proc.wait()
            with contextlib.suppress(ProcessLookupError):  # stragglers in the group
                os.killpg(c.proc.pid, signal.SIGKILL)
            if "running" in c.state:
                self._exited_no_restart(c)

    def _exited_no_restart(self, c: _Container) -> None:
        policy, self.policy = self.policy, "Never"
        try:
            self._exited(c)
        finally:
            self.policy = policy

    def _finish_deleted(self) -> None:
        self._deleted = True
        if self._shutdown.is_set():
            self._kill_all(grace=2)
            return
        self._kill_all(grace=self._grace)
        with contextlib.suppress(ApiError):  # already gone, or another uid by now
            self.rest.delete(self.api_path, {"gracePeriodSeconds": 0,
                                             "preconditions": {"uid": self.uid}})  # fmt: skip

    def _end(self, phase: str, reason: str | None, message: str) -> None:
        self.phase, self.reason, self.message = phase, reason, message
        self._report()

    # -- status ----------------------------------------------------------------------------

    def _report(self) -> None:
        if self._shutdown.is_set():
            return
        ready = all("running" in c.state for c in self.main) and self.phase == "Running"
        initialized = all("terminated" in c.state for c in self.init) or not self.init

        def cond(kind: str, ok: bool) -> Obj:
            return {"type": kind, "status": "True" if ok else "False",
                    "lastTransitionTime": now()}  # fmt: skip

        logs = "; ".join(f"{c.name}={c.log}" for c in [*self.init, *self.main])
        message = f"{self.message + '; ' if self.message else ''}node stand-in logs: {logs}"
        status: dict[str, Any] = {
            "phase": self.phase, "message": message, "reason": self.reason,
            "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.started_at,
            "conditions": [cond("PodScheduled", True), cond("Initialized", initialized),
                           cond("ContainersReady", ready), cond("Ready", ready)],
            "containerStatuses": [c.status() for c in self.main],
        }  # fmt: skip
        if self.init:
            status["initContainerStatuses"] = [c.status() for c in self.init]
        try:
            self.rest.merge_patch(f"{self.api_path}/status", {"status": status})
        except ApiError as e:
            if e.status != 404:
                log.warning("node stand-in: status of %s not written: %s", self.key, e)
