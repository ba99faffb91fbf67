"""A throw-away PostgreSQL server for tests, demos and benchmarks.

`LocalPostgres` runs Debian's PostgreSQL binaries (``initdb``/``pg_ctl``) on a fresh
temporary data directory and a free loopback port, and removes everything on `stop()`.
When the current user is root, the server runs as the ``postgres`` user, because
PostgreSQL refuses to run as root. It never touches a server it did not start.

This is development tooling, not something the operator uses in production.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Self

__all__ = ["LocalPostgres", "Service", "find_pg_bindir", "free_port"]


class Service:
    """Something started and stopped by this process: ``start()`` returns it, ``stop()``
    may be called twice; ``with`` starts and stops it."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def find_pg_bindir() -> Path:
    """Locate PostgreSQL's server binaries: ``$KFLOW_PG_BINDIR``, Debian's layout, or PATH."""
    explicit = os.environ.get("KFLOW_PG_BINDIR")
    if explicit:
        return Path(explicit)
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise FileNotFoundError(
        "PostgreSQL server binaries not found: install Debian's 'postgresql' package "
        "(scripts/bootstrap.sh does) or set KFLOW_PG_BINDIR"
    )


class LocalPostgres(Service):
    """A PostgreSQL cluster in a temp dir, listening on 127.0.0.1 only, with trust auth.

    Use as a context manager, or call `start()` and `stop()`. `dsn` is valid once started.
    """

    def __init__(self, *, port: int | None = None, bindir: Path | None = None) -> None:
        self.port = port or free_port()
        self.bindir = bindir or find_pg_bindir()
        self._tmp: Path | None = None
        self._run_as: pwd.struct_passwd | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def datadir(self) -> Path:
        if self._tmp is None:
            raise RuntimeError("LocalPostgres is not started")
        return self._tmp / "data"

    def _run(self, *args: str) -> None:
        kwargs: dict[str, object] = {}
        if self._run_as is not None:
            kwargs = {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid}
        result = subprocess.run(
            args,
            capture_output=True,
            text=True,
            env={**os.environ, "LC_ALL": "C.UTF-8"},
            **kwargs,  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} failed ({result.returncode}): {result.stderr.strip()}"
            )

    def start(self) -> LocalPostgres:
        self._tmp = Path(tempfile.mkdtemp(prefix="kflow-pg-"))
        if os.geteuid() == 0:
            self._run_as = pwd.getpwnam("postgres")
            os.chown(self._tmp, self._run_as.pw_uid, self._run_as.pw_gid)
        data = str(self.datadir)
        self._run(
            str(self.bindir / "initdb"),
            "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self._tmp} "
            "-c max_connections=200 -c shared_buffers=128MB"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D", data, "-o", options, "-l", str(self._tmp / "server.log"), "-w", "start",
        )  # fmt: skip
        return self

    def restart(self, mode: str = "immediate") -> None:
        """Restart the server on the same port and data: ``immediate`` drops every
        connection at once and makes the server recover from its WAL, as a crashed
        primary does (or a failover, seen from a client: the same address answers anew)."""
        assert self._tmp is not None  # datadir checked it
        log = str(self._tmp / "server.log")  # not our stdout: the server outlives pg_ctl
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-l", log,
                  "-w", "restart")  # fmt: skip

    def stop(self) -> None:
        if self._tmp is None:
            return
        with contextlib.suppress(RuntimeError):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "stop")
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None
