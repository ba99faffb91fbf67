"""Pure parts of kflow.dev.cluster: env expansion, the downward API, the cache, PID safety."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kflow.dev.cluster.build import COMPONENTS, _locked, find_cached
from kflow.dev.cluster.podenv import PodConfigError, command_line, expand, field_ref, translate
from kflow.dev.cluster.procs import is_ours, stop_pid

POD = {
    "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "web"}},
    "spec": {"nodeName": "n1"},
    "status": {},
}


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", env) == "1-two"
    assert expand("$(MISSING)", env) == "$(MISSING)"
    assert expand("$$(A)", env) == "$(A)"


def test_field_ref_covers_the_downward_api() -> None:
    assert field_ref(POD, "metadata.name") == "p"
    assert field_ref(POD, "metadata.namespace") == "ns"
    assert field_ref(POD, "metadata.uid") == "u-1"
    assert field_ref(POD, "spec.nodeName") == "n1"
    assert field_ref(POD, "spec.serviceAccountName") == "default"
    assert field_ref(POD, "status.podIP") == "127.0.0.1"
    assert field_ref(POD, "metadata.labels['app']") == "web"
    with pytest.raises(PodConfigError, match="not modelled"):
        field_ref(POD, "spec.priority")


def test_command_line_needs_a_command() -> None:
    container = {"name": "c", "command": ["python", "-c"], "args": ["print('$(X)')"]}
    assert command_line(container, {"X": "y"}) == ["python", "-c", "print('y')"]
    with pytest.raises(PodConfigError, match="no command"):
        command_line({"name": "c", "args": ["x"]}, {})


def test_find_cached_ignores_unfinished_builds(tmp_path: Path) -> None:
    unfinished = tmp_path / "k8s-1.0" / "bin"
    unfinished.mkdir(parents=True)
    for c in COMPONENTS:
        (unfinished / c).touch()
    assert find_cached(tmp_path) is None  # no .complete stamp
    (tmp_path / "k8s-1.0" / ".complete").write_text("1.0\n")
    found = find_cached(tmp_path)
    assert found is not None
    assert found.version == "1.0"
    assert found.path("kube-apiserver") == unfinished / "kube-apiserver"


def test_stop_pid_leaves_other_processes_alone(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        # /proc/<pid>/cmdline can read empty for a moment right after the exec.
        deadline = time.monotonic() + 5
        while not is_ours(proc.pid, "time.sleep(30)") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not is_ours(proc.pid, str(tmp_path))
        stop_pid(proc.pid, marker=str(tmp_path), grace=0.1)  # not ours: untouched
        assert proc.poll() is None
        stop_pid(proc.pid, marker="time.sleep(30)", grace=5)
        assert proc.wait(timeout=5) is not None
    finally:
        proc.kill()
        proc.wait()


def test_build_lock_makes_a_second_builder_wait(tmp_path: Path) -> None:
    said: list[str] = []
    order: list[str] = []
    first_in = threading.Event()
    release = threading.Event()

    def first() -> None:
        with _locked(tmp_path / "build.lock", said.append):
            first_in.set()
            release.wait(5)
            order.append("first")

    def second() -> None:
        with _locked(tmp_path / "build.lock", said.append):
            order.append("second")

    a = threading.Thread(target=first)
    a.start()
    first_in.wait(5)
    b = threading.Thread(target=second)
    b.start()
    b.join(0.3)
    assert b.is_alive()  # blocked on the lock
    release.set()
    a.join(5)
    b.join(5)
    assert order == ["first", "second"]
    assert any("waiting" in s for s in said)


def test_mount_paths_are_translated_to_the_pods_volume_directories() -> None:
    mounts = {"/var/run/kflow": Path("/pods/p/volumes/a"),
              "/var/run/kflow/webhook": Path("/pods/p/volumes/b")}  # fmt: skip
    assert translate("/var/run/kflow/webhook/tls.crt", mounts) == "/pods/p/volumes/b/tls.crt"
    assert translate("/var/run/kflow/dsn", mounts) == "/pods/p/volumes/a/dsn"
    assert translate("/var/run/kflow", mounts) == "/pods/p/volumes/a"
    assert translate("/var/run/kflowx/y", mounts) == "/var/run/kflowx/y"  # a prefix, not a path
    assert translate("--cert=/var/run/kflow/x", mounts) == "--cert=/var/run/kflow/x"
