"""A small synchronous Kubernetes REST client for the node stand-in, on httpx.

Why not the official ``kubernetes`` client: the stand-in only moves raw JSON (it never needs
typed models), and it must be able to abort a watch at once on shutdown; with httpx a watch
is one streamed response whose socket `close()` shuts down from another thread. Objects
are plain dicts, as a kubelet sees them on the wire.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from kflow.apierrors import ApiError, checked_json
from kflow.dev.cluster.kubeconfig import ApiEndpoint

__all__ = ["ApiError", "Obj", "Rest"]

Obj = dict[str, Any]


class Rest:
    """GET/POST/PATCH/DELETE and watch on one API server, as one bearer-token identity."""

    def __init__(self, endpoint: ApiEndpoint) -> None:
        self.endpoint = endpoint
        self._client = self._new_client(timeout=30)
        self._watch_client = self._new_client(timeout=None)
        self._streams: set[httpx.Response] = set()
        self._lock = threading.Lock()

    def _new_client(self, *, timeout: float | None) -> httpx.Client:
        return httpx.Client(
            base_url=self.endpoint.server,
            verify=ssl.create_default_context(cafile=str(self.endpoint.ca_file)),
            headers={"Authorization": f"Bearer {self.endpoint.token}"},
            timeout=httpx.Timeout(timeout, connect=10),
        )

    @staticmethod
    def _check(r: httpx.Response) -> Obj:
        body: Obj = checked_json(r)
        return body

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Obj:
        return self._check(self._client.get(path, params=params))

    def create(self, path: str, body: Obj) -> Obj:
        return self._check(self._client.post(path, json=body))

    def merge_patch(self, path: str, body: Obj) -> Obj:
        content = json.dumps(body).encode()
        headers = {"Content-Type": "application/merge-patch+json"}
        return self._check(self._client.patch(path, content=content, headers=headers))

    def delete(self, path: str, body: Obj | None = None) -> Obj:
        return self._check(self._client.request("DELETE", path, json=body or {}))

    def watch(self, path: str, params: Mapping[str, str]) -> Iterator[tuple[str, Obj]]:
        """Yield (type, object) events of one watch request, until the server ends it."""
        request = self._watch_client.build_request("GET", path, params={**params, "watch": "1"})
        response = self._watch_client.send(request, stream=True)
        with self._lock:
            self._streams.add(response)
        try:
            if response.status_code >= 400:
                response.read()
                self._check(response)
            for line in response.iter_lines():
                if line:
                    event = json.loads(line)
                    yield str(event["type"]), event["object"]
        finally:
            with self._lock:
                self._streams.discard(response)
            response.close()

    def close(self) -> None:
        """Close both connections, ending any watch in progress (its reader sees an error)."""
        with self._lock:
            streams = list(self._streams)
        for response in streams:
            # A read blocked in another thread only returns when its socket is shut down.
            stream = response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._watch_client.close()
        self._client.close()
