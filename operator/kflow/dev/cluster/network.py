"""The stand-in's pod network as the API server sees it: a CONNECT proxy to Services.

In a cluster, the API server calls a webhook's Service at its ClusterIP, which kube-proxy
routes to a Pod. The node stand-in runs Pods as local processes on the host's network,
so no route to a ClusterIP exists. `LocalCluster(pod_network=True)` therefore starts the
API server with an egress selector: its traffic to the cluster (webhooks, kubelets) goes
through an HTTP CONNECT proxy, as it does through Konnectivity in managed clusters.
`ServiceProxy`, run by the node stand-in, is that proxy:

- a target that is a Service's ClusterIP and port goes to 127.0.0.1 at the port a Running
  Pod behind the Service listens on (the Service port's ``targetPort``, by number or by a
  container port's name);
- any other target (the kubelet's log endpoint, a webhook given by URL) is dialled as is.

TLS to the proxy is required by the API server (1.20); the certificates are the cluster's,
made at its start (`PodNetwork`). For loopback test clusters only.
"""

from __future__ import annotations

import contextlib
import select
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kflow.certs import self_signed
from kflow.dev.cluster.rest import Obj, Rest

__all__ = ["PodNetwork", "ServiceProxy", "egress_config"]


@dataclass(frozen=True)
class PodNetwork:
    """Where the cluster's egress proxy listens, and its certificates."""

    port: int
    cert: Path  # the proxy's (IP 127.0.0.1)
    key: Path
    client_cert: Path  # the API server's, to the proxy
    client_key: Path

    @classmethod
    def create(cls, folder: Path, port: int) -> PodNetwork:
        network = cls(port, folder / "proxy.crt", folder / "proxy.key",
                      folder / "client.crt", folder / "client.key")  # fmt: skip
        self_signed(network.cert, network.key, name="kflow-pod-network")
        self_signed(network.client_cert, network.client_key, name="kube-apiserver")
        return network

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PodNetwork:
        return cls(int(data["port"]), *(Path(data[k]) for k in
                                        ("cert", "key", "client_cert", "client_key")))  # fmt: skip


def egress_config(network: PodNetwork) -> str:
    """The API server's ``--egress-selector-config-file``: the cluster through the proxy."""
    return f"""apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      tcp:
        url: https://127.0.0.1:{network.port}
        tlsConfig:
          caBundle: {network.cert}
          clientCert: {network.client_cert}
          clientKey: {network.client_key}
"""


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True  # the port is the cluster's, kept across node restarts
    daemon_threads = True


class NoRoute(Exception):
    """A Service with no Running Pod behind it (or no such port)."""


class ServiceProxy:
    """The CONNECT proxy of `PodNetwork`, in threads of this process."""

    def __init__(self, rest: Rest, network: PodNetwork) -> None:
        self.rest, self.network = rest, network
        self._server: _Server | None = None
        self._tunnels: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> ServiceProxy:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(self.network.cert, self.network.key)
        server = _Server(("127.0.0.1", self.network.port), _handler_for(self))
        # The handshake is each connection's own (in its thread, with a timeout): done in
        # accept(), one silent client would stall every other.
        server.socket = tls.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        self._server = server
        threading.Thread(target=server.serve_forever, name="pod-network", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:  # open tunnels end too (their threads see the sockets close)
            for sock in self._tunnels:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    @contextlib.contextmanager
    def _tunnel(self, *socks: socket.socket) -> Iterator[None]:
        with self._lock:
            self._tunnels.update(socks)
        try:
            yield
        finally:
            with self._lock:
                self._tunnels.difference_update(socks)

    def route(self, host: str, port: int) -> tuple[str, int]:
        """Where a connection to ``host:port`` goes (see the module's docstring)."""
        for service in self.rest.get("/api/v1/services")["items"]:
            if service["spec"].get("clusterIP") != host:
                continue
            wanted = next((p for p in service["spec"].get("ports", []) if p["port"] == port), None)
            if wanted is None:
                raise NoRoute(f"service {service['metadata']['name']} has no port {port}")
            return "127.0.0.1", self._pod_port(service, wanted.get("targetPort", port))
        return host, port

    def _pod_port(self, service: Obj, target: int | str) -> int:
        meta, selector = service["metadata"], service["spec"].get("selector") or {}
        where = f"{meta['namespace']}/{meta['name']}:{target}"
        if not selector:  # endpoints managed by hand: not modelled
            raise NoRoute(f"no Running pod serves {where} (the service selects none)")
        query = ",".join(f"{k}={v}" for k, v in selector.items())
        pods = self.rest.get(f"/api/v1/namespaces/{meta['namespace']}/pods",
                             {"labelSelector": query})["items"]  # fmt: skip
        for pod in pods:
            running = pod.get("status", {}).get("phase") == "Running"
            if not running or pod["metadata"].get("deletionTimestamp"):
                continue
            if isinstance(target, int):
                return target
            for container in pod["spec"]["containers"]:
                for p in container.get("ports", []):
                    if p.get("name") == target:
                        return int(p["containerPort"])
        raise NoRoute(f"no Running pod serves {where}")


def _handler_for(proxy: ServiceProxy) -> type[socketserver.BaseRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        rbufsize = 0  # read no further than the request: the rest is the tunnel's

        def setup(self) -> None:
            self.request.settimeout(10)
            self.request.do_handshake()
            self.request.settimeout(None)
            super().setup()

        def handle(self) -> None:
            request = self.rfile.readline(65537).decode("latin-1").split()
            while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass  # the request's headers: nothing in them matters here
            if len(request) < 2 or request[0] != "CONNECT":
                self.wfile.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                return
            host, _, port = request[1].rpartition(":")
            try:
                upstream = socket.create_connection(proxy.route(host.strip("[]"), int(port)), 10)
            except Exception as e:  # no route, a refused port, the API server's error
                self.wfile.write(f"HTTP/1.1 503 Service Unavailable\r\n\r\n{e}".encode())
                return
            with upstream, proxy._tunnel(self.request, upstream):
                self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self.wfile.flush()
                _relay(self.request, upstream)

    return Handler


def _relay(client: socket.socket, upstream: socket.socket) -> None:
    """Copy both ways until either side closes."""
    with contextlib.suppress(OSError):
        while True:
            # The client side is TLS: bytes may wait decrypted in its buffer, not the socket.
            ready: list[socket.socket] = []
            if isinstance(client, ssl.SSLSocket) and client.pending():
                ready = [client]
            if not ready:
                ready, _, _ = select.select([client, upstream], [], [], 60)
            if not ready:
                continue
            for source in ready:
                data = source.recv(65536)
                if not data:
                    return
                (upstream if source is client else client).sendall(data)
