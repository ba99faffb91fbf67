"""LocalCluster on its own: sessions side by side, and a port taken under its feet."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from kflow.dev.cluster import LocalCluster
from kflow.dev.postgres import free_port
from tests.e2e.conftest import Harness


def test_a_taken_port_is_retried_on_new_ports(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports: Iterator[int] = iter([free_port(), free_port(), taken])  # etcd x2, then API

        picked: list[int] = []

        def pick() -> int:
            picked.append(next(ports, None) or free_port())
            return picked[-1]

        monkeypatch.setattr("kflow.dev.cluster.cluster.free_port", pick)
        with LocalCluster(binaries=harness.cluster.binaries, controller_manager=False,
                          scheduler=False) as cluster:  # fmt: skip
            assert cluster.api_port != taken
            assert picked.index(taken) == 2
            assert len(picked) == 6  # etcd x2 + API server, twice: the first start failed
            assert cluster.server != harness.cluster.server  # its own, beside the session's
            r = httpx.get(f"{cluster.server}/version", verify=False,
                          headers={"Authorization": f"Bearer {cluster.token()}"})  # fmt: skip
            assert r.json()["gitVersion"].startswith("v1.20")
            workdir = cluster.workdir
        assert workdir is not None
        assert not workdir.exists()
