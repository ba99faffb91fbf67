"""A real Kubernetes control plane on loopback: etcd, API server, controller-manager, scheduler.

`LocalCluster` runs the binaries cached by `kflow.dev.cluster.build` and Debian's etcd in a
fresh temp directory on free ports, with RBAC on and token authentication from a
``tokens.csv`` it writes (an ``admin`` in ``system:masters`` plus any users you name, so tests
can prove what RBAC denies). It writes an admin kubeconfig, waits for ``/readyz``, and stops
exactly the processes it started, by PID, removing its directory. There is no kubelet: see
`kflow.dev.cluster.node.NodeStandIn` for running Pods.

Its state (PIDs, ports, paths) is saved in ``state.json`` in the work dir, so a later
process can `attach()` and `stop()` it (what ``python -m kflow.dev.cluster down`` does).

This is development and test tooling, never used by the operator in production.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from kflow.dev.cluster.build import K8sBinaries, ensure_built
from kflow.dev.cluster.kubeconfig import ApiEndpoint, write_kubeconfig
from kflow.dev.cluster.network import PodNetwork, egress_config
from kflow.dev.cluster.procs import spawn, stop_child, stop_pid, tail
from kflow.dev.postgres import Service, free_port

__all__ = ["ClusterError", "LocalCluster", "find_etcd"]

# Controllers that need a cloud or a kubelet's node heartbeats: without them a hand-made
# Node stays as its registrar leaves it.
_CONTROLLERS = "*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle"
_STOP_ORDER = ("scheduler", "controller-manager", "apiserver", "etcd")


class ClusterError(RuntimeError):
    """The local control plane failed to start; the message carries the server's log."""


def find_etcd() -> Path:
    """Locate etcd: ``$KFLOW_ETCD`` or PATH (Debian's ``etcd-server`` puts it in /usr/bin)."""
    explicit = os.environ.get("KFLOW_ETCD")
    found = explicit or shutil.which("etcd")
    if not found:
        raise FileNotFoundError(
            "etcd not found: install Debian's 'etcd-server' (scripts/bootstrap-cluster.sh does) "
            "or set KFLOW_ETCD"
        )
    return Path(found)


class LocalCluster(Service):
    """A control plane in a temp dir, listening on 127.0.0.1 only.

    Use as a context manager, or call `start()` and `stop()`. `users` maps extra user names
    to their groups; each gets a bearer token (`token(name)`), fixed at start because the
    API server reads ``tokens.csv`` once.
    """

    def __init__(
        self,
        *,
        binaries: K8sBinaries | None = None,
        users: Mapping[str, Sequence[str]] | None = None,
        controller_manager: bool = True,
        scheduler: bool = True,
        pod_network: bool = False,
    ) -> None:
        self.binaries = binaries
        self.users = {
            "admin": ("system:masters",),
            **{u: tuple(g) for u, g in (users or {}).items()},
        }
        self.with_controller_manager = controller_manager
        self.with_scheduler = scheduler
        self.with_pod_network = pod_network
        self.network: PodNetwork | None = None
        """With ``pod_network``: the egress proxy a `NodeStandIn` must serve, through which
        the API server reaches Services (webhooks) and kubelets (`kflow.dev.cluster.network`)."""
        self.workdir: Path | None = None
        self.pids: dict[str, int] = {}
        self.markers: dict[str, str] = {}  # per helper process: what its command line names
        self.cleanup: list[str] = []  # helpers' directories, removed by stop()
        self.signals: dict[str, int] = {}  # helpers stopped by another signal than SIGTERM
        self.tokens: dict[str, str] = {}
        self.api_port = 0
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- what users of a started cluster need ------------------------------------------

    @property
    def _dir(self) -> Path:
        if self.workdir is None:
            raise RuntimeError("LocalCluster is not started")
        return self.workdir

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def ca_file(self) -> Path:
        return self._dir / "certs" / "apiserver.crt"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig."""
        return self._dir / "kubeconfig"

    def token(self, user: str = "admin") -> str:
        return self.tokens[user]

    def endpoint(self, user: str = "admin") -> ApiEndpoint:
        return ApiEndpoint(server=self.server, ca_file=self.ca_file, token=self.token(user))

    def kubeconfig_for(self, user: str) -> Path:
        """A kubeconfig authenticating as `user` (one of `users`), written on first use."""
        return write_kubeconfig(self._dir / f"kubeconfig-{user}", self.endpoint(user), user=user)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, *, timeout: float = 90.0) -> LocalCluster:
        """Start every server and wait until each answers its health check.

        Ports are picked free but only taken when a server binds them, so another process
        may win one in between: then the whole start is retried on new ports.
        """
        binaries = self.binaries = self.binaries or ensure_built()
        for attempt in range(3):
            try:
                self._start_once(binaries, timeout)
                return self
            except ClusterError as e:
                self.stop()
                if "address already in use" not in str(e) or attempt == 2:
                    raise
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _start_once(self, binaries: K8sBinaries, timeout: float) -> None:
        d = self.workdir = Path(tempfile.mkdtemp(prefix="kflow-k8s-"))
        self._write_credentials(d)
        self._start_etcd(d)
        self._start_apiserver(d, binaries)
        headers = {"Authorization": f"Bearer {self.tokens['admin']}"}
        self._wait_healthy("apiserver", f"{self.server}/readyz", timeout, headers=headers)
        write_kubeconfig(self.kubeconfig, self.endpoint(), user="admin")
        kc = str(self.kubeconfig)
        common = [f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
                  f"--authorization-kubeconfig={kc}", "--bind-address=127.0.0.1",
                  "--port=0", "--leader-elect=false"]  # fmt: skip
        ports = {}
        if self.with_controller_manager:
            ports["controller-manager"] = port = free_port()
            self._spawn("controller-manager", [
                binaries.path("kube-controller-manager"), *common, f"--secure-port={port}",
                f"--service-account-private-key-file={d / 'sa.key'}",
                f"--root-ca-file={self.ca_file}", f"--controllers={_CONTROLLERS}",
            ])  # fmt: skip
        if self.with_scheduler:
            ports["scheduler"] = port = free_port()
            self._spawn("scheduler", [
                binaries.path("kube-scheduler"), *common, f"--secure-port={port}",
            ])  # fmt: skip
        for name, port in ports.items():
            # /healthz needs no credentials; their certificates are self-signed.
            self._wait_healthy(name, f"https://127.0.0.1:{port}/healthz", timeout)
        self.save_state()

    def _write_credentials(self, d: Path) -> None:
        for args in (
            ["openssl", "genrsa", "-out", str(d / "sa.key"), "2048"],
            ["openssl", "rsa", "-in", str(d / "sa.key"), "-pubout", "-out", str(d / "sa.pub")],
        ):
            result = subprocess.run(args, capture_output=True, text=True)
            if result.returncode != 0:
                raise ClusterError(f"{' '.join(args)} failed: {result.stderr.strip()}")
        self.tokens = {user: secrets.token_hex(16) for user in self.users}
        lines = [
            f'{self.tokens[u]},{u},{u},"{",".join(groups)}"' for u, groups in self.users.items()
        ]
        (d / "tokens.csv").write_text("\n".join(lines) + "\n")
        (d / "tokens.csv").chmod(0o600)

    def _spawn(self, name: str, args: Sequence[str | Path]) -> None:
        proc = spawn(args, log=self._dir / f"{name}.log")
        self._procs[name] = proc
        self.pids[name] = proc.pid

    def _start_etcd(self, d: Path) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn("etcd", [
            find_etcd(), "--data-dir", d / "etcd", "--name", "kflow",
            "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"kflow=http://127.0.0.1:{peer}",
        ])  # fmt: skip

    def _start_apiserver(self, d: Path, binaries: K8sBinaries) -> None:
        self.api_port = free_port()
        extra = []
        if self.with_pod_network:
            self.network = PodNetwork.create(d / "network", free_port())
            (d / "egress.yaml").write_text(egress_config(self.network))
            extra.append(f"--egress-selector-config-file={d / 'egress.yaml'}")
        self._spawn("apiserver", [
            binaries.path("kube-apiserver"), f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1", f"--secure-port={self.api_port}",
            "--advertise-address=127.0.0.1", f"--cert-dir={d / 'certs'}",
            f"--token-auth-file={d / 'tokens.csv'}", "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={d / 'sa.pub'}",
            f"--service-account-signing-key-file={d / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--kubelet-preferred-address-types=InternalIP", *extra,
        ])  # fmt: skip

    def _wait_healthy(
        self, name: str, url: str, timeout: float, *, headers: dict[str, str] | None = None
    ) -> None:
        """Poll `url` until it answers 200; fail early if any server of ours has exited."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        tls: ssl.SSLContext | bool | None = None if name == "apiserver" else False
        while time.monotonic() < deadline:
            for proc_name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise ClusterError(
                        f"{proc_name} exited ({proc.returncode}) during start; end of its log:\n"
                        + tail(self._dir / f"{proc_name}.log")
                    )
            if tls is None and self.ca_file.exists():  # the API server writes it as it starts
                tls = ssl.create_default_context(cafile=str(self.ca_file))
            if tls is not None:
                try:
                    r = httpx.get(url, headers=headers, verify=tls, timeout=2)
                    if r.status_code == 200:
                        return
                    last = f"{r.status_code}: {r.text[-500:]}"
                except httpx.HTTPError as e:
                    last = repr(e)
            time.sleep(0.2)
        raise ClusterError(
            f"{name} not healthy after {timeout:.0f}s ({last}); end of its log:\n"
            + tail(self._dir / f"{name}.log")
        )

    def save_state(self) -> Path:
        """Write ``state.json``: what `attach()` needs to reach and stop this cluster."""
        state = {
            "workdir": str(self._dir),
            "api_port": self.api_port,
            "pids": self.pids,
            "markers": self.markers,
            "cleanup": self.cleanup,
            "signals": self.signals,
            "tokens": self.tokens,
            "version": self.binaries.version if self.binaries else None,
            "network": self.network.to_json() if self.network else None,
        }
        path = self._dir / "state.json"
        path.touch(mode=0o600)
        path.write_text(json.dumps(state, indent=2) + "\n")
        return path

    @classmethod
    def attach(cls, workdir: Path) -> LocalCluster:
        """A handle on a cluster another process started, from its ``state.json``."""
        state = json.loads((workdir / "state.json").read_text())
        cluster = cls()
        cluster.workdir = Path(state["workdir"])
        cluster.api_port = int(state["api_port"])
        cluster.pids = {k: int(v) for k, v in state["pids"].items()}
        cluster.tokens = dict(state["tokens"])
        cluster.markers = dict(state.get("markers", {}))
        cluster.cleanup = list(state.get("cleanup", []))
        cluster.signals = {k: int(v) for k, v in state.get("signals", {}).items()}
        cluster.users = dict.fromkeys(cluster.tokens, ())
        if state.get("network"):
            cluster.network = PodNetwork.from_json(state["network"])
        return cluster

    def add_process(
        self,
        name: str,
        pid: int,
        *,
        marker: str | None = None,
        cleanup: Path | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        """Record a helper process so that `stop()` stops it too (and removes `cleanup`).

        Its command line must contain `marker` (by default, the cluster's work dir): that is
        how `stop()` knows the PID still belongs to it. `stop_signal` asks it to stop
        (PostgreSQL wants SIGINT for a fast shutdown).
        """
        self.pids[name] = pid
        if stop_signal != signal.SIGTERM:
            self.signals[name] = int(stop_signal)
        if marker is not None:
            self.markers[name] = marker
        if cleanup is not None:
            self.cleanup.append(str(cleanup))
        self.save_state()

    def stop(self) -> None:
        """Stop every process this cluster started (helpers first), then remove its dir."""
        if self.workdir is None:
            return
        marker = str(self.workdir)
        order = [n for n in self.pids if n not in _STOP_ORDER] + list(_STOP_ORDER)
        for name in order:
            pid = self.pids.pop(name, None)
            proc = self._procs.pop(name, None)
            sig = self.signals.get(name, signal.SIGTERM)
            if proc is not None:
                stop_child(proc, sig=sig)
            elif pid is not None:  # started by another process (`up`): check it is ours
                stop_pid(pid, marker=self.markers.get(name, marker), sig=sig)
        for path in [*self.cleanup, str(self.workdir)]:
            shutil.rmtree(path, ignore_errors=True)
        self.cleanup.clear()
        self.workdir = None
