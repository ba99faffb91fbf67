"""End-to-end fixtures: a real Kubernetes control plane per test session, no containers.

The session gets etcd, kube-apiserver (RBAC, token auth), kube-controller-manager,
kube-scheduler and a node stand-in that runs Pods as local processes
(`kflow.dev.cluster`), on loopback and free ports, in a temp dir of its own; PostgreSQL
comes from the shared `pg_dsn` fixture. Each test gets a fresh namespace.

The Kubernetes binaries are built (once per machine, ~7 min) during collection, before any
test's timeout starts; ``scripts/bootstrap-cluster.sh`` does it ahead of time. If they
cannot be built, every e2e test fails with the reason — they never skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from kflow.dev.cluster import BuildError, K8sBinaries, LocalCluster, NodeStandIn, ensure_built
from kflow.dev.cluster.build import cache_root

E2E_DIR = Path(__file__).parent
CHARTS = E2E_DIR / "charts"
# Token-file users for RBAC tests: the API server reads tokens.csv once, at start.
NOBODY, VIEWER, VIEWERS_GROUP = "e2e-nobody", "e2e-viewer", "e2e:viewers"

_binaries: K8sBinaries | None = None
_build_error: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: needs a real Kubernetes control plane (started by the harness)"
    )


def _is_e2e(item: pytest.Item) -> bool:
    return E2E_DIR in Path(str(item.path)).parents


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _is_e2e(item):
            item.add_marker(pytest.mark.e2e)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the binaries now if an e2e test will run: no test's timeout runs yet."""
    global _binaries, _build_error
    if _binaries is not None or not any(_is_e2e(item) for item in session.items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")

    def say(message: str) -> None:
        if reporter is not None:
            reporter.write_line(f"[e2e] {message}")

    try:
        _binaries = ensure_built(say=say)
    except (BuildError, OSError) as e:
        _build_error = f"{type(e).__name__}: {e}"


@dataclass(frozen=True)
class Harness:
    """What an e2e test may use: the control plane, the node stand-in, a shell env."""

    cluster: LocalCluster
    node: NodeStandIn
    env: dict[str, str]  # PATH with helm and kubectl, KUBECONFIG of the admin, helm's dirs

    def run(
        self, *args: str | Path, user: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl or helm (as the admin, or as a token-file `user`)."""
        env = dict(self.env)
        if user is not None:
            env["KUBECONFIG"] = str(self.cluster.kubeconfig_for(user))
        result = subprocess.run(
            [str(a) for a in args], env=env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}"
            )
        return result


def _tool_path() -> str:
    """PATH with the cached helm (and the kubectl shipped beside it) first."""
    tools = cache_root() / "tools" / "bin"
    path = f"{tools}:{os.environ.get('PATH', '')}"
    for tool in ("helm", "kubectl"):
        if shutil.which(tool, path=path) is None:
            pytest.fail(f"{tool} not found: run scripts/bootstrap-cluster.sh", pytrace=False)
    return path


@pytest.fixture(scope="session")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """The session's control plane and node stand-in, stopped (by PID) at the end."""
    if _binaries is None:
        pytest.fail(
            "the Kubernetes binaries could not be built, so no API server can run: "
            f"{_build_error or 'not built'}\n(run scripts/bootstrap-cluster.sh)",
            pytrace=False,
        )
    path = _tool_path()
    cluster = LocalCluster(
        binaries=_binaries, users={NOBODY: (), VIEWER: (VIEWERS_GROUP,)}, pod_network=True
    )
    with cluster:
        assert cluster.workdir is not None
        pods = cluster.workdir / "pods"
        with NodeStandIn(cluster.endpoint(), workdir=pods, network=cluster.network) as node:
            helm_home = tmp_path_factory.mktemp("helm")
            env = {
                **os.environ, "PATH": path, "KUBECONFIG": str(cluster.kubeconfig),
                "KFLOW_CACHE_DIR": str(cache_root()),  # what this session built or found
                "HELM_CACHE_HOME": str(helm_home / "cache"),
                "HELM_CONFIG_HOME": str(helm_home / "config"),
                "HELM_DATA_HOME": str(helm_home / "data"),
            }  # fmt: skip
            yield Harness(cluster=cluster, node=node, env=env)


@pytest.fixture
def kube_env(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """For one test: helm and kubectl on PATH and the admin KUBECONFIG in os.environ."""
    for key in ("PATH", "KUBECONFIG", "KFLOW_CACHE_DIR"):
        monkeypatch.setenv(key, harness.env[key])
    return harness.env


@pytest.fixture(scope="session")
def api(harness: Harness) -> Iterator[client.ApiClient]:
    """A kubernetes client authenticated as the admin."""
    api_client = config.new_client_from_config(config_file=str(harness.cluster.kubeconfig))
    yield api_client
    api_client.close()


def wait_for(
    check: Callable[[], Any], *, timeout: float = 30, interval: float = 0.2, what: str = ""
) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}: {last!r}")


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace whose default service account is ready (so Pods are admitted)."""
    core = client.CoreV1Api(api)
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))

    def has_default_sa() -> bool:
        # On 1.20 the ServiceAccount admission plugin refuses Pods until the tokens
        # controller has given the account its token Secret.
        return any(sa.metadata.name == "default" and sa.secrets for sa in
                   core.list_namespaced_service_account(name).items)  # fmt: skip

    wait_for(has_default_sa, what=f"the default service account (and its token) in {name}")
    yield name
    core.delete_namespace(name)


# The operator fixtures live beside the classes they build; imported last, since that
# module uses `Harness` and `wait_for` from here.
from tests.e2e.operator_env import crds, operator, runs  # noqa: E402, F401
