"""How to reach a local API server: an endpoint with a bearer token, and its kubeconfig.

Kubeconfigs are written as JSON, which every kubeconfig reader accepts (YAML is a superset),
so no YAML library is needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = ["ApiEndpoint", "write_kubeconfig"]


@dataclass(frozen=True)
class ApiEndpoint:
    """An API server URL, the CA file that signs its certificate, and a bearer token."""

    server: str
    ca_file: Path
    token: str

    @property
    def host(self) -> str:
        return self.server.removeprefix("https://").rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.server.rsplit(":", 1)[1])

    def with_token(self, token: str) -> ApiEndpoint:
        return replace(self, token=token)


def write_kubeconfig(
    path: Path, endpoint: ApiEndpoint, *, user: str = "kflow", namespace: str | None = None
) -> Path:
    """Write a single-context kubeconfig for `endpoint` to `path` (mode 0600); return it."""
    context: dict[str, str] = {"cluster": "kflow-local", "user": user}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kflow-local",
                "cluster": {
                    "server": endpoint.server,
                    "certificate-authority": str(endpoint.ca_file),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": endpoint.token}}],
        "contexts": [{"name": "kflow-local", "context": context}],
        "current-context": "kflow-local",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path
