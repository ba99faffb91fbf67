"""Start and stop the processes of a local cluster, only ever by the PIDs we started.

Each server runs in a session of its own (so a Ctrl-C in the terminal reaches only the
foreground program) with its output in a log file. `stop_pid()` checks that a PID still
belongs to the process we started — its command line must mention our work directory —
before it signals it, so a recycled PID is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["is_ours", "spawn", "stop_child", "stop_pid", "tail"]


def spawn(
    args: Sequence[str | Path], *, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a server in its own session, stdout and stderr appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(a) for a in args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def is_ours(pid: int, marker: str) -> bool:
    """True if `pid` is alive and its command line contains `marker` (our work dir)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return marker.encode() in cmdline


def _alive(pid: int) -> bool:
    try:
        # A zombie child of ours still answers kill(0): reap it if it is ours.
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return False
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def stop_pid(pid: int, *, marker: str, grace: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Signal one process we started, then SIGKILL it if it outlives `grace` seconds."""
    if not is_ours(pid, marker):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid) and is_ours(pid, marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)


def stop_child(
    proc: subprocess.Popen[bytes], *, grace: float = 10.0, sig: int = signal.SIGTERM
) -> None:
    """Stop a process this process started: until we reap it, its PID cannot be reused."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tail(path: Path, chars: int = 2000) -> str:
    """The end of a log file, for error messages."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
