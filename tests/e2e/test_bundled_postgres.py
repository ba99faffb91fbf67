"""The bundled PostgreSQL run for real as its manifest says (scripts/check-bundled-postgres.py):
its uid, fsGroup, read-only root with only the mounted paths writable, PGDATA below the
volume's root, the image entrypoint's first-start steps, and the DSN the chart renders.
The node stand-in runs no images, so this is the check of the StatefulSet's settings."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.e2e.conftest import Harness
from tests.e2e.operator_env import ROOT

SCRIPT = ROOT / "scripts" / "check-bundled-postgres.py"


@pytest.mark.parametrize(
    "sets",
    [
        [],
        # OpenShift's way: a uid of the namespace's range, group 0, fsGroup from the range.
        [
            "postgresql.podSecurityContext.runAsUser=1000680000",
            "postgresql.podSecurityContext.runAsGroup=0",
            "postgresql.podSecurityContext.fsGroup=1000680000",
        ],
    ],
    ids=["defaults", "arbitrary-uid"],
)
def test_the_bundled_postgresql_runs_with_its_manifests_settings(
    harness: Harness, sets: list[str]
) -> None:
    args = [arg for s in sets for arg in ("--set", s)]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=harness.env, capture_output=True,
        text=True, timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    uid = sets[0].rsplit("=", 1)[1] if sets else "999"
    assert f"bundled PostgreSQL ran as uid {uid}" in result.stdout
    assert "writable: /var/lib/postgresql/data /var/run/postgresql /tmp" in result.stdout
    # The DSN's user and database, from another address than the trusted 127.0.0.1, by
    # password (scram-sha-256, the line the image's entrypoint adds).
    assert "kflow|kflow|127.0.0.2|scram-sha-256" in result.stdout
