"""``python -m kflow.dev.cluster up`` / ``down``: a cluster for local use, stopped by PID."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from kflow.dev.cluster import cache_root
from tests.e2e.conftest import Harness


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # exited; its new parent reaps it


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kflow.dev.cluster", *args],
                          capture_output=True, text=True, timeout=90)  # fmt: skip


def test_up_and_down(harness: Harness, kube_env: dict[str, str]) -> None:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    up = _cli("up", "--name", name, "--postgres")
    assert up.returncode == 0, up.stderr + up.stdout
    info = json.loads((cache_root() / "clusters" / f"{name}.json").read_text())
    try:
        state = json.loads((Path(info["workdir"]) / "state.json").read_text())
        assert set(state["pids"]) == {"etcd", "apiserver", "controller-manager", "scheduler",
                                      "node", "postgres"}  # fmt: skip
        assert f"export KUBECONFIG={info['kubeconfig']}" in up.stdout
        kubectl = ["kubectl", "--kubeconfig", info["kubeconfig"]]  # on PATH: kube_env
        nodes = subprocess.run([*kubectl, "get", "nodes", "-o", "name"],
                               capture_output=True, text=True, check=True)  # fmt: skip
        assert nodes.stdout == "node/kflow-node-stand-in\n"
        assert _cli("up", "--name", name).returncode == 1  # already up: refused
        assert "running" in _cli("status", "--name", name).stdout
    finally:
        down = _cli("down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert all(_gone(pid) for pid in state["pids"].values())
    assert not Path(info["workdir"]).exists()
    assert not any(Path(d).exists() for d in state["cleanup"])  # PostgreSQL's dir too
    assert not (cache_root() / "clusters" / f"{name}.json").exists()
    assert os.path.exists(harness.cluster.kubeconfig)  # the session's cluster is untouched
