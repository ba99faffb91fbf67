"""``python -m kflow.dev.cluster``: build, start, inspect and stop a local cluster.

``up`` starts the control plane, a node stand-in process and (with ``--postgres``) a
throw-away PostgreSQL, records them under a name (``$KFLOW_CACHE_DIR/clusters/<name>.json``)
and returns; ``down`` stops exactly those processes by PID and removes their directories.
``up --foreground`` stays attached and tears everything down on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

from kflow.dev.cluster.build import BuildError, cache_root, ensure_built
from kflow.dev.cluster.cluster import LocalCluster
from kflow.dev.cluster.node import NodeStandIn
from kflow.dev.cluster.procs import is_ours, spawn, tail
from kflow.dev.cluster.rest import ApiError, Rest
from kflow.dev.postgres import LocalPostgres

NODE_NAME = "kflow-node-stand-in"


def _pointer(name: str) -> Path:
    return cache_root() / "clusters" / f"{name}.json"


def _wait_for(event: threading.Event | None = None) -> None:
    """Block until SIGINT or SIGTERM."""
    done = event or threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1):
        pass


def _wait_node_ready(cluster: LocalCluster, node_log: Path, pid: int) -> None:
    rest = Rest(cluster.endpoint())
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not is_ours(pid, str(cluster.workdir)):
                raise RuntimeError(f"node stand-in exited; its log:\n{tail(node_log)}")
            try:
                node = rest.get(f"/api/v1/nodes/{NODE_NAME}")
                if not node["spec"].get("taints"):
                    return
            except ApiError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"node stand-in not ready in 30s; its log:\n{tail(node_log)}")
    finally:
        rest.close()


def up(args: argparse.Namespace) -> int:
    pointer = _pointer(args.name)
    if pointer.exists():
        print(f"cluster {args.name!r} is already up ({pointer}); run 'down' first", file=sys.stderr)
        return 1
    started = time.monotonic()
    cluster = LocalCluster(binaries=ensure_built(), pod_network=True).start()
    try:
        assert cluster.workdir is not None
        node_log = cluster.workdir / "node.log"
        node = spawn(
            [sys.executable, "-m", "kflow.dev.cluster", "node", "--workdir", cluster.workdir],
            log=node_log,
        )
        cluster.add_process("node", node.pid)
        _wait_node_ready(cluster, node_log, node.pid)
        info = {"workdir": str(cluster.workdir), "kubeconfig": str(cluster.kubeconfig),
                "server": cluster.server}  # fmt: skip
        if args.postgres:
            pg = LocalPostgres().start()
            postmaster = int((pg.datadir / "postmaster.pid").read_text().split()[0])
            cluster.add_process(
                "postgres",
                postmaster,
                marker=str(pg.datadir),
                cleanup=pg.datadir.parent,
                stop_signal=signal.SIGINT,  # PostgreSQL's fast shutdown
            )
            info["dsn"] = pg.dsn
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(json.dumps(info, indent=2) + "\n")
    except BaseException:
        cluster.stop()
        raise
    print(f"cluster {args.name!r} up in {time.monotonic() - started:.1f}s: {cluster.server}")
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    if "dsn" in info:
        print(f"export KFLOW_DSN={info['dsn']}")
    helm = cache_root() / "tools" / "bin"
    if helm.is_dir():
        print(f'export PATH="{helm}:$PATH"   # helm')
    if args.foreground:
        print("Ctrl-C stops it", flush=True)
        _wait_for()
        return down(args)
    return 0


def down(args: argparse.Namespace) -> int:
    pointer = _pointer(args.name)
    if not pointer.exists():
        print(f"no cluster named {args.name!r} is up", file=sys.stderr)
        return 0
    workdir = Path(json.loads(pointer.read_text())["workdir"])
    if (workdir / "state.json").exists():
        LocalCluster.attach(workdir).stop()
    pointer.unlink()
    print(f"cluster {args.name!r} stopped")
    return 0


def status(args: argparse.Namespace) -> int:
    pointer = _pointer(args.name)
    if not pointer.exists():
        print(f"no cluster named {args.name!r} is up")
        return 1
    info = json.loads(pointer.read_text())
    cluster = LocalCluster.attach(Path(info["workdir"]))
    for name, pid in cluster.pids.items():
        alive = is_ours(pid, cluster.markers.get(name, info["workdir"]))
        print(f"{name:20} pid {pid:>7}  {'running' if alive else 'GONE'}")
    print(json.dumps(info, indent=2))
    return 0


def build(args: argparse.Namespace) -> int:
    try:
        binaries = ensure_built()
    except BuildError as e:
        print(f"build failed: {e}", file=sys.stderr)
        return 1
    print(f"kubernetes {binaries.version}: {binaries.bindir}")
    return 0


def node(args: argparse.Namespace) -> int:
    """Run a node stand-in for the cluster whose work dir is given, until SIGTERM."""
    cluster = LocalCluster.attach(args.workdir)
    with NodeStandIn(cluster.endpoint(), workdir=args.workdir / "pods", name=NODE_NAME,
                     network=cluster.network):  # fmt: skip
        _wait_for()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kflow.dev.cluster", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, fn, text in (
        ("up", up, "start a cluster (binaries are built first if needed)"),
        ("down", down, "stop a cluster started by 'up'"),
        ("status", status, "show a cluster's processes"),
        ("build", build, "build and cache the Kubernetes binaries"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.set_defaults(fn=fn)
        if name in ("up", "down", "status"):
            sub.add_argument("--name", default="default", help="which cluster (default: default)")
    commands.choices["up"].add_argument("--postgres", action="store_true",
                                        help="also start a throw-away PostgreSQL")  # fmt: skip
    commands.choices["up"].add_argument("--foreground", action="store_true",
                                        help="stay attached; Ctrl-C stops everything")  # fmt: skip
    node_cmd = commands.add_parser("node", help="(internal) run the node stand-in")
    node_cmd.add_argument("--workdir", type=Path, required=True)
    node_cmd.set_defaults(fn=node)
    args = parser.parse_args(argv)
    code: int = args.fn(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
