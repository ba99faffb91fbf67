"""The control plane is the real thing: CRD schema validation and RBAC are enforced."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.e2e.conftest import NOBODY, VIEWER, VIEWERS_GROUP, Harness, wait_for

MANIFESTS = Path(__file__).parent / "manifests"


def _widget(tmp_path: Path, name: str, spec: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        apiVersion: e2e.kflow.io/v1
        kind: Widget
        metadata: {{name: {name}}}
        spec: {spec}
        """))  # fmt: skip
    return path


def test_crd_schema_rejects_a_bad_object(harness: Harness, namespace: str, tmp_path: Path) -> None:
    harness.run("kubectl", "apply", "-f", MANIFESTS / "widget-crd.yaml")
    harness.run("kubectl", "wait", "--for=condition=established", "--timeout=30s",
                "crd/widgets.e2e.kflow.io")  # fmt: skip

    good = _widget(tmp_path, "good", "{size: 3, colour: red}")
    wait_for(lambda: harness.run("kubectl", "apply", "-n", namespace, "-f", good,
                                 check=False).returncode == 0,
             what="the Widget kind to be served")  # fmt: skip
    got = harness.run("kubectl", "get", "wdg", "good", "-n", namespace, "-o",
                      "jsonpath={.spec.size}")  # fmt: skip
    assert got.stdout == "3"

    bad_type = harness.run("kubectl", "apply", "-n", namespace, "-f",
                           _widget(tmp_path, "bad-type", "{size: big}"), check=False)  # fmt: skip
    assert bad_type.returncode != 0
    assert "spec.size" in bad_type.stderr

    too_big = harness.run("kubectl", "apply", "-n", namespace, "--validate=false", "-f",
                          _widget(tmp_path, "too-big", "{size: 99, colour: pink}"),
                          check=False)  # fmt: skip
    assert too_big.returncode != 0
    assert "spec.size" in too_big.stderr  # the API server's own schema check
    assert "spec.colour" in too_big.stderr


def test_rbac_denies_users_without_rights(harness: Harness, namespace: str) -> None:
    denied = harness.run("kubectl", "get", "pods", "-n", namespace, user=NOBODY, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr
    assert f'User "{NOBODY}" cannot list resource "pods"' in denied.stderr

    harness.run("kubectl", "create", "role", "pod-viewer", "-n", namespace,
                "--verb=get,list", "--resource=pods")  # fmt: skip
    harness.run("kubectl", "create", "rolebinding", "pod-viewers", "-n", namespace,
                "--role=pod-viewer", f"--group={VIEWERS_GROUP}")  # fmt: skip
    wait_for(lambda: harness.run("kubectl", "get", "pods", "-n", namespace, user=VIEWER,
                                 check=False).returncode == 0,
             what="the viewer's new rights")  # fmt: skip

    create = harness.run("kubectl", "create", "configmap", "nope", "-n", namespace,
                         user=VIEWER, check=False)  # fmt: skip
    assert create.returncode != 0
    assert f'User "{VIEWER}" cannot create resource "configmaps"' in create.stderr
    # The role is namespaced: another namespace stays closed to the viewer.
    other = harness.run("kubectl", "get", "pods", "-n", "default", user=VIEWER, check=False)
    assert other.returncode != 0
    assert "Forbidden" in other.stderr
