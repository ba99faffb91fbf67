"""Build kube-apiserver, kube-controller-manager and kube-scheduler once, and cache them.

No Kubernetes server binary can be downloaded here, but Debian ships the full 1.20 tree as
its ``kubernetes`` source package. `ensure_built()` fetches it with ``apt-get source``,
swaps two vendored libraries for Debian's newer copies (Go 1.19 with the vendored
reflect2 v1.0.1 makes the API server segfault at the first CRD write), builds the three
binaries in GOPATH mode as Debian does, and keeps them in
``$KFLOW_CACHE_DIR/k8s-<source version>/bin`` (default ``~/.cache/kflow``), outside the
checkout. A build takes about 7 minutes on 2 cores; later calls return at once. A lock file
makes a second process wait for a build in progress instead of starting its own.

The system packages this needs are installed by ``scripts/bootstrap-cluster.sh``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "COMPONENTS",
    "BuildError",
    "K8sBinaries",
    "cache_root",
    "ensure_built",
    "find_cached",
]

COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
_COMPLETE = ".complete"  # written last: a version dir without it is an unfinished build
_DEBIAN_GOCODE = Path("/usr/share/gocode/src/github.com")
_SWAPPED = ("modern-go/reflect2", "json-iterator/go")

Say = Callable[[str], None]


class BuildError(RuntimeError):
    """The Kubernetes binaries could not be fetched or built; the message says what to do."""


@dataclass(frozen=True)
class K8sBinaries:
    """A complete, cached build: one directory holding every binary in `COMPONENTS`."""

    version: str
    bindir: Path

    def path(self, component: str) -> Path:
        return self.bindir / component


def cache_root() -> Path:
    """Where kflow caches build output: ``$KFLOW_CACHE_DIR`` or ``~/.cache/kflow``."""
    explicit = os.environ.get("KFLOW_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kflow"


def _say(message: str) -> None:
    print(f"[kflow.dev.cluster] {message}", flush=True)


def find_cached(root: Path | None = None) -> K8sBinaries | None:
    """The newest complete build in the cache, or None. Touches no network."""
    root = root or cache_root()
    builds = [
        K8sBinaries(version=d.name.removeprefix("k8s-"), bindir=d / "bin")
        for d in sorted(root.glob("k8s-*"), key=lambda d: d.stat().st_mtime)
        if (d / _COMPLETE).is_file() and all((d / "bin" / c).is_file() for c in COMPONENTS)
    ]
    return builds[-1] if builds else None


@contextmanager
def _locked(path: Path, say: Say) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"another process is building (lock {path}); waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(args: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    try:
        result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise BuildError(f"{args[0]} not found: run scripts/bootstrap-cluster.sh") from e
    if result.returncode != 0:
        raise BuildError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr.strip()[-3000:]}\n"
            "(scripts/bootstrap-cluster.sh installs what the build needs)"
        )
    return result.stdout


def source_version(workdir: Path) -> str:
    """The version of the ``kubernetes`` source package apt would fetch now."""
    out = _run(["apt-get", "source", "--print-uris", "kubernetes"], cwd=workdir)
    match = re.search(r"\skubernetes_(\S+)\.dsc\s", out)
    if match is None:
        raise BuildError(
            "apt knows no 'kubernetes' source package: add a bookworm deb-src entry and run "
            "apt-get update (scripts/bootstrap-cluster.sh does both)"
        )
    return match.group(1)


def _fetch_source(build_dir: Path, say: Say) -> Path:
    download = build_dir / "download"
    src = build_dir / "src"
    shutil.rmtree(src, ignore_errors=True)
    download.mkdir(parents=True, exist_ok=True)
    if not list(download.glob("kubernetes_*.dsc")):
        say("downloading Debian's kubernetes source package (apt-get source)")
        _run(["apt-get", "source", "--download-only", "kubernetes"], cwd=download)
    dsc = next(download.glob("kubernetes_*.dsc"))
    say(f"unpacking {dsc.name}")
    _run(["dpkg-source", "-x", "--no-check", str(dsc), str(src)], cwd=download)
    return src


def _swap_vendored(src: Path) -> None:
    """Replace the vendored reflect2/json-iterator with Debian's (see the module docstring)."""
    for rel in _SWAPPED:
        theirs = _DEBIAN_GOCODE / rel
        if not theirs.is_dir():
            raise BuildError(
                f"{theirs} is missing: install golang-github-modern-go-reflect2-dev and "
                "golang-github-json-iterator-go-dev (scripts/bootstrap-cluster.sh does)"
            )
        ours = src / "vendor/github.com" / rel
        shutil.rmtree(ours, ignore_errors=True)
        shutil.copytree(theirs, ours, symlinks=False)
        for path in sorted(ours.rglob("*"), reverse=True):
            if path.is_dir() and path.name.endswith("_tests"):
                shutil.rmtree(path)
            elif path.is_file() and path.name.endswith("_test.go"):
                path.unlink()


def _make(src: Path, *, gocache: Path, say: Say) -> None:
    """Run Kubernetes' own ``make``, printing a progress line every 20 seconds."""
    gopath = src / ".go"
    (gopath / "src/k8s.io").mkdir(parents=True, exist_ok=True)
    link = gopath / "src/k8s.io/kubernetes"
    if not link.is_symlink():
        link.symlink_to("../../..")
    env = {
        **os.environ,
        "GOPATH": str(gopath),
        "GOCACHE": str(gocache),
        "CGO_ENABLED": "0",
        "GOFLAGS": "-v",  # one line per compiled package: our progress meter
    }
    targets = " ".join(f"cmd/{c}" for c in COMPONENTS)
    log = src / "build.log"
    say(f"building {', '.join(COMPONENTS)} (about 7 minutes cold on 2 cores; log: {log})")
    started = time.monotonic()
    with log.open("w") as out:
        # Its own process group, so that an interrupted build stops all of Go's workers.
        proc = subprocess.Popen(
            ["make", f"WHAT={targets}"], cwd=src, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        done = threading.Event()

        def report() -> None:
            while not done.wait(20):
                lines = log.read_text(errors="replace").count("\n")
                say(f"  ... {time.monotonic() - started:.0f}s, {lines} packages/lines so far")

        reporter = threading.Thread(target=report, daemon=True)
        reporter.start()
        try:
            code = proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
        finally:
            done.set()
            reporter.join()
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise BuildError(f"make WHAT='{targets}' failed ({code}); end of {log}:\n{tail}")
    say(f"built in {time.monotonic() - started:.0f}s")


def ensure_built(*, root: Path | None = None, say: Say = _say) -> K8sBinaries:
    """Return the cached binaries, building them first if no complete build is cached."""
    root = root or cache_root()
    cached = find_cached(root)
    if cached is not None:
        return cached
    with _locked(root / "build.lock", say):
        cached = find_cached(root)  # built by whoever held the lock before us
        if cached is not None:
            return cached
        started = time.monotonic()
        root.mkdir(parents=True, exist_ok=True)
        version = source_version(root)
        build_dir = root / f"k8s-{version}"
        src = _fetch_source(build_dir, say)
        _swap_vendored(src)
        _make(src, gocache=root / "go-build", say=say)
        bindir = build_dir / "bin"
        bindir.mkdir(exist_ok=True)
        for component in COMPONENTS:
            shutil.copy2(src / "_output/bin" / component, bindir / component)
        (build_dir / _COMPLETE).write_text(f"{version}\n")
        # The sources, the tree and Go's object cache are ~2 GB we no longer need.
        for path in [src, build_dir / "download", root / "go-build"]:
            shutil.rmtree(path, ignore_errors=True)
        for tarball in build_dir.glob("kubernetes_*.tar.*"):  # dpkg-source's copy
            tarball.unlink()
        say(f"kubernetes {version} ready in {bindir} ({time.monotonic() - started:.0f}s)")
        return K8sBinaries(version=version, bindir=bindir)
