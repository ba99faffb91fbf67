"""The one kubelet endpoint the node stand-in serves: container logs, for ``kubectl logs``.

``kubectl logs`` asks the API server, which proxies to the Pod's node at
``https://<InternalIP>:<status.daemonEndpoints.kubeletEndpoint.Port>/containerLogs/...``.
`LogServer` answers that path from the container's log file, with ``tailLines``,
``limitBytes`` and ``follow`` (it streams until the container stops). It serves TLS with a
self-signed certificate made by ``openssl``; the API server does not verify kubelet
certificates unless started with ``--kubelet-certificate-authority``, and sends no client
credentials without ``--kubelet-client-certificate``: this endpoint, like the rest of the
stand-in, is for loopback test clusters only. Nothing else of the kubelet API is served.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from kflow.certs import self_signed

__all__ = ["LogServer", "LogSource"]

# (namespace, pod, container) -> (log file, is the container still running?), or None
LogSource = Callable[[str, str, str], tuple[Path, Callable[[], bool]] | None]


class LogServer:
    """An HTTPS server on 127.0.0.1 and a free port, answering ``/containerLogs/``."""

    def __init__(self, source: LogSource, *, certdir: Path, name: str) -> None:
        self.source, self.certdir, self.name = source, certdir, name
        self.stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("LogServer is not started")
        return int(self._server.server_address[1])

    def start(self) -> LogServer:
        cert, key = self.certdir / "kubelet.crt", self.certdir / "kubelet.key"
        self_signed(cert, key, name=self.name)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        server.socket = tls.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="kubelet-logs")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _handler_for(logs: LogServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass  # the API server's own logs say who asked

        def do_GET(self) -> None:
            url = urlparse(self.path)
            parts = url.path.strip("/").split("/")
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            found = logs.source(*parts[1:4]) if len(parts) == 4 else None
            if parts[0] != "containerLogs" or found is None:
                self.send_error(404, "no such container on the node stand-in")
                return
            path, running = found
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            with contextlib.suppress(OSError):  # the client went away
                self._send(path, running, query)

        def _send(self, path: Path, running: Callable[[], bool], query: dict[str, str]) -> None:
            data = path.read_bytes() if path.exists() else b""
            offset = len(data)
            if "tailLines" in query:
                lines = data.splitlines(keepends=True)
                data = (
                    b"".join(lines[-int(query["tailLines"]) :])
                    if query["tailLines"] != "0"
                    else b""
                )
            budget = int(query.get("limitBytes", "0")) or None
            data = data[:budget] if budget else data
            self.wfile.write(data)
            self.wfile.flush()
            if query.get("follow") not in ("true", "1") or budget:
                return
            while not logs.stopping.is_set():
                alive = running()
                with path.open("rb") as f:
                    f.seek(offset)
                    more = f.read()
                if more:
                    offset += len(more)
                    self.wfile.write(more)
                    self.wfile.flush()
                elif not alive:
                    return
                time.sleep(0.2)

    return Handler
