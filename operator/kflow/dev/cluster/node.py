"""A node stand-in: runs Pods as local processes. FOR TESTS AND LOCAL USE ONLY.

There is no kubelet or container runtime on these machines. `NodeStandIn` registers a
``Node``, marks it Ready (status patch) and removes the ``not-ready`` taint the API server
puts on new nodes, so the real scheduler binds Pods to it. It watches the Pods bound to it
and runs each one in a `kflow.dev.cluster.podrun.PodRunner` thread:

- each container's ``command``/``args`` run as a local process in its own process group,
  with the project's Python environment first on ``PATH`` (so ``python`` is this venv's);
- ``env``/``envFrom``: literal values with ``$(VAR)`` expansion, ``secretKeyRef``,
  ``configMapKeyRef``, and downward-API ``fieldRef`` (metadata.name/namespace/uid,
  labels/annotations, spec.serviceAccountName, spec.nodeName, status.podIP/hostIP);
- credentials for the Pod's service account: a TokenRequest token bound to the Pod, written
  with ``ca.crt`` and ``namespace`` to ``<pod dir>/serviceaccount/`` and a kubeconfig at
  ``<pod dir>/kubeconfig``; the process gets ``KUBECONFIG`` and ``KUBERNETES_SERVICE_HOST`` /
  ``KUBERNETES_SERVICE_PORT`` (the loopback API server). In-cluster loaders find no token
  at the standard path and fall back to ``KUBECONFIG`` (kopf and the kubernetes client do);
- phase, conditions, container states, exit codes and restart counts on the status
  subresource; init containers in order; ``restartPolicy`` Always/OnFailure/Never with
  back-off; ``activeDeadlineSeconds``; deletion with SIGTERM, the grace period, SIGKILL,
  then deleting the Pod object with grace 0;
- logs: each container's output goes to ``<pod dir>/<container>.log``, named in the Pod's
  ``status.message``, and ``kubectl logs [-f] [--tail]`` works: the stand-in serves the
  kubelet's ``/containerLogs`` endpoint (`kflow.dev.cluster.logserver`), the only kubelet
  endpoint it serves (no exec, attach, port-forward, metrics).

It talks to the API server with a small httpx client (`kflow.dev.cluster.rest`), not the
official ``kubernetes`` client: it handles raw JSON as a kubelet does and must end its watch
at once on `stop()`. It runs in threads inside the calling process (the e2e fixtures) or as
a process of its own (``python -m kflow.dev.cluster up`` starts one).

- Secret and ConfigMap volumes: written under ``<pod dir>/volumes/<volume>/``, and the
  container's env values and arguments that start with a mount path are rewritten to that
  directory (a process cannot have its own ``/var/run/...``);
- with a `PodNetwork` (``LocalCluster(pod_network=True)``): the API server reaches
  Services (a webhook's) through `kflow.dev.cluster.network.ServiceProxy`, which routes a
  ClusterIP to the port a Running Pod behind it listens on.

What it does NOT model: images (the command must be given; ``workingDir`` is used only if it
exists here), other volumes (emptyDir, projected, PVCs: nothing is mounted; a path outside
a Secret or ConfigMap mount is the host's), networking between Pods (every Pod's IP is
127.0.0.1 and ports are the host's, no DNS, no ClusterIP but the API server's), probes
(a running container is Ready), resource requests and limits (the node advertises fixed
capacity), ``resourceFieldRef``, ephemeral and sidecar containers, security contexts,
lifecycle hooks, token refresh (tokens last a day), node heartbeats and leases, eviction,
and restarting Pods after the stand-in restarts.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

from kflow.dev.cluster.kubeconfig import ApiEndpoint
from kflow.dev.cluster.logserver import LogServer
from kflow.dev.cluster.network import PodNetwork, ServiceProxy
from kflow.dev.cluster.podrun import PodRunner, now
from kflow.dev.cluster.rest import ApiError, Obj, Rest
from kflow.dev.postgres import Service

__all__ = ["NodeStandIn"]

log = logging.getLogger("kflow.dev.cluster.node")
_CAPACITY = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}


class NodeStandIn(Service):
    """Registers Node `name` and runs the Pods bound to it, in background threads.

    Use as a context manager, or call `start()` and `stop()`. Pod directories (logs,
    credentials) live under `workdir`. `python_bin` is the directory put first on a Pod's
    ``PATH``; by default, the one holding this interpreter (the project's venv).
    """

    def __init__(
        self,
        endpoint: ApiEndpoint,
        *,
        workdir: Path,
        name: str = "kflow-node-stand-in",
        python_bin: Path | None = None,
        network: PodNetwork | None = None,
    ) -> None:
        self.endpoint, self.workdir, self.name = endpoint, workdir, name
        self.python_bin = python_bin or Path(sys.executable).parent
        self.rest = Rest(endpoint)
        self.runners: dict[str, PodRunner] = {}  # by Pod uid
        self._deleting: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch_loop, name=f"node-{name}", daemon=True)
        self.logs = LogServer(self._log_source, certdir=workdir / ".kubelet", name=name)
        self.proxy = ServiceProxy(self.rest, network) if network is not None else None

    def start(self) -> NodeStandIn:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs.start()
        if self.proxy is not None:
            self.proxy.start()
        self._register()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching and kill every process this stand-in started."""
        self._stop.set()
        self.logs.stop()
        if self.proxy is not None:
            self.proxy.stop()
        self.rest.close()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        for runner in list(self.runners.values()):
            runner.shutdown()
        for runner in list(self.runners.values()):
            runner.join(timeout=30)

    def pids(self, namespace: str, pod: str) -> list[int]:
        """The live processes of one Pod (for tests that check what runs)."""
        return [
            pid
            for r in list(self.runners.values())
            if r.key == f"{namespace}/{pod}"
            for pid in r.pids()
        ]

    def _log_source(
        self, namespace: str, pod: str, container: str
    ) -> tuple[Path, Callable[[], bool]] | None:
        for runner in reversed(list(self.runners.values())):  # the newest Pod of that name
            if runner.key == f"{namespace}/{pod}" and runner.has_container(container):
                return runner.pod_dir / f"{container}.log", partial(runner.running, container)
        return None

    def pod_dir(self, pod: Obj) -> Path:
        meta = pod["metadata"]
        return self.workdir / str(meta["namespace"]) / f"{meta['name']}-{meta['uid'][:8]}"

    # -- the Node ------------------------------------------------------------------------

    def _register(self) -> None:
        labels = {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux",
                  "kubernetes.io/arch": "amd64", "kflow.io/node-stand-in": "true"}  # fmt: skip
        try:
            self.rest.create("/api/v1/nodes", {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.name, "labels": labels},
            })  # fmt: skip
        except ApiError as e:
            if e.status != 409:
                raise
        self.rest.merge_patch(f"/api/v1/nodes/{self.name}", {"spec": {"taints": None}})

        def condition(kind: str, status: str, reason: str) -> Obj:
            return {"type": kind, "status": status, "reason": reason,
                    "lastHeartbeatTime": now(), "lastTransitionTime": now()}  # fmt: skip

        status = {
            "conditions": [
                condition("Ready", "True", "KubeletReady"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID"),
            ],
            # No Hostname address: the API server would try to resolve it to reach us.
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.logs.port}},
            "capacity": _CAPACITY, "allocatable": _CAPACITY,
            "nodeInfo": {"kubeletVersion": "v1.20.2-kflow-node-stand-in",
                         "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "local-process://",
                         "osImage": "", "kernelVersion": "", "machineID": "",
                         "systemUUID": "", "bootID": ""},
        }  # fmt: skip
        self.rest.merge_patch(f"/api/v1/nodes/{self.name}/status", {"status": status})

    # -- the Pods ------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        params = {"fieldSelector": f"spec.nodeName={self.name}"}
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    listing = self.rest.get("/api/v1/pods", params)
                    for pod in listing["items"]:
                        self._on_event("ADDED", pod)
                    version = listing["metadata"]["resourceVersion"]
                for kind, obj in self.rest.watch(
                    "/api/v1/pods", {**params, "resourceVersion": version, "timeoutSeconds": "30"}
                ):
                    if kind == "ERROR":
                        version = ""  # e.g. 410 Gone: list again
                        break
                    if kind != "BOOKMARK":
                        self._on_event(kind, obj)
                    version = obj["metadata"]["resourceVersion"]
            except Exception as e:
                if self._stop.is_set():
                    return
                log.warning("node stand-in: watch failed (%r); listing again", e)
                version = ""
                self._stop.wait(1)

    def _on_event(self, kind: str, pod: Obj) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        runner = self.runners.get(uid)
        if kind == "DELETED":
            if runner is not None:
                runner.request_delete(0)
            return
        if meta.get("deletionTimestamp"):
            grace = float(meta.get("deletionGracePeriodSeconds") or 0)
            if runner is not None and runner.request_delete(grace):
                return
            if uid not in self._deleting:
                self._deleting.add(uid)
                path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
                try:
                    self.rest.delete(path, {"gracePeriodSeconds": 0,
                                            "preconditions": {"uid": uid}})  # fmt: skip
                except ApiError as e:
                    log.debug("node stand-in: delete of %s: %s", meta["name"], e)
            return
        phase = pod.get("status", {}).get("phase")
        if runner is None and phase not in ("Succeeded", "Failed"):
            runner = PodRunner(
                self.rest, pod, pod_dir=self.pod_dir(pod), ca_file=self.endpoint.ca_file,
                path=str(self.python_bin),
            )  # fmt: skip
            self.runners[uid] = runner
            runner.start()
