"""Leader election over a ``coordination.k8s.io/v1`` Lease: one active operator, hot standbys.

With ``KFLOW_LEADER_ELECTION`` the operator's replicas share one Lease; the replica
holding it acts (watches, timers, segments), the others only wait for it. The algorithm
is client-go's (``tools/leaderelection``):

- a replica takes the Lease when there is none, when its holder gave it up (an empty
  ``holderIdentity``), or when the replica has seen the same record unrenewed for the
  holder's ``leaseDurationSeconds``, counted on its own monotonic clock from when it first
  saw that record: clock skew between nodes does not matter (``renewTime`` only informs);
- every write is a PUT carrying the ``resourceVersion`` read (optimistic concurrency), so
  of two replicas taking an expired Lease one gets 409 Conflict and stays a standby;
- the leader renews every retry period. One that has not renewed for the renew deadline
  (shorter than the lease duration) must stop acting at once: `Watchdog` ends the
  process, from a thread, even while the event loop is stuck. A standby may take over
  only a lease duration after the last renewal it saw, later than that deadline, so two
  replicas never act at once while their clocks run at about the same rate; PostgreSQL's
  per-run leases fence out a writer that acts late all the same (a VM paused and resumed);
- on a clean stop the leader writes an empty holder (`LeaderElector.release`): a standby
  takes over at its next look instead of waiting the lease out.

`LeaderElector` is the logic, over a `LeaseStore` and injected clocks (unit-tested with
in-memory ones; `kflow.controller.kube_lease` is the store on the API server);
`campaign` runs the election around the operator's life.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

from kflow._errors import ApiError
from kflow.settings import OperatorSettings

__all__ = [
    "Campaign", "Conflict", "LeaderElector", "LeadershipLost", "LeaseRecord", "LeaseStore",
    "Timing", "Watchdog", "campaign", "exit_now", "identity",
]  # fmt: skip

log = logging.getLogger(__name__)

EXIT_LOST = 1
"""The exit status of a leader that lost its Lease: the Pod's container restarts, as a
standby (the simplest way to be sure nothing it started goes on)."""


@dataclass(frozen=True)
class LeaseRecord:
    """What the Lease says (its ``spec``), and the ``resourceVersion`` it was read at."""

    holder: str
    """``holderIdentity``; empty: nobody (given up)."""
    duration: float
    """``leaseDurationSeconds``: how long others wait for a renewal before taking over."""
    acquired: datetime | None
    renewed: datetime | None
    transitions: int
    version: str = ""


class Conflict(Exception):
    """Another replica wrote the Lease since it was read (or created it first)."""


class LeadershipLost(Exception):
    """The leader could not renew its Lease in time, or another replica holds it now."""


class LeaseStore(Protocol):
    async def get(self) -> LeaseRecord | None: ...

    async def create(self, record: LeaseRecord) -> LeaseRecord:
        """Create the Lease; `Conflict` if it exists."""
        ...

    async def replace(self, record: LeaseRecord) -> LeaseRecord:
        """Write ``record`` over the Lease read at ``record.version``; `Conflict` if it
        changed since."""
        ...


@dataclass(frozen=True)
class Timing:
    duration: float
    renew_deadline: float
    retry_period: float

    @classmethod
    def from_settings(cls, settings: OperatorSettings) -> Timing:
        return cls(
            duration=settings.leader_lease_duration.total_seconds(),
            renew_deadline=settings.leader_renew_deadline.total_seconds(),
            retry_period=settings.leader_retry_period.total_seconds(),
        )


def identity(pod_name: str | None) -> str:
    """This process's ``holderIdentity``: the Pod's name (else hostname and pid) and a
    random suffix, so that a restarted container never takes its predecessor's Lease
    for its own."""
    base = pod_name or f"{socket.gethostname()}-{os.getpid()}"
    return f"{base}_{uuid.uuid4().hex[:8]}"


def _wall() -> datetime:
    return datetime.now(UTC)


class LeaderElector:
    """One replica's side of the election (see the module docstring)."""

    def __init__(
        self,
        leases: LeaseStore,
        *,
        identity: str,
        timing: Timing,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = _wall,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.identity = identity
        self.timing = timing
        self._leases = leases
        self.monotonic, self._wall, self._sleep = monotonic, wall, sleep
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self.deadline: float | None = None
        """While leading: the monotonic time by which the Lease must have been renewed
        again, or this replica stops acting. None on standby."""

    @property
    def leading(self) -> bool:
        return self.deadline is not None

    @property
    def holder(self) -> str | None:
        """The holder of the Lease as last seen (None: no Lease seen yet)."""
        return None if self._observed is None else self._observed.holder

    async def try_acquire_or_renew(self) -> bool:
        """One look at the Lease: take or renew it if this replica may. True if it holds
        the Lease now. Raises `Conflict` when another replica wrote first, and the store's
        errors (`ApiError`, `OSError`) when the API server cannot be reached."""
        started = self.monotonic()  # the deadline counts from before the write is sent
        now = self._wall()
        current = await self._leases.get()
        if current is None:
            mine = LeaseRecord(self.identity, self.timing.duration, now, now, transitions=0)
            return self._held(await self._leases.create(mine), started)
        if self._observed is None or current.version != self._observed.version:
            # Seen from now on: counted from after the read, when the write had happened.
            self._observed, self._observed_at = current, self.monotonic()
        ours = current.holder == self.identity
        if current.holder and not ours:
            if self.monotonic() < self._observed_at + current.duration:
                return False  # held by another replica, and renewed lately as far as seen
            log.info("the Lease of %s expired (unrenewed for %.0fs)", current.holder,
                     current.duration)  # fmt: skip
        record = replace(
            current, holder=self.identity, duration=self.timing.duration, renewed=now,
            acquired=current.acquired if ours else now,
            transitions=current.transitions if ours else current.transitions + 1,
        )  # fmt: skip
        return self._held(await self._leases.replace(record), started)

    def _held(self, record: LeaseRecord, started: float) -> bool:
        self._observed, self._observed_at = record, self.monotonic()
        self.deadline = started + self.timing.renew_deadline
        return True

    async def _attempt(self, timeout: float) -> bool:
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for loses a cancellation that
            # comes as the call ends, and a renewal task must stop when cancelled.
            async with asyncio.timeout(timeout):
                return await self.try_acquire_or_renew()
        except Conflict:
            return False  # another replica wrote first: look again at the next period
        except (ApiError, OSError, TimeoutError) as exc:
            log.warning("cannot read or write the Lease: %s", exc or type(exc).__name__)
            return False

    async def acquire(self, looked: asyncio.Event | None = None) -> None:
        """Wait, as a standby, until this replica holds the Lease; ``looked`` is set once
        the first look is over (won or not)."""
        said: str | None = None
        while not await self._attempt(self.timing.renew_deadline):
            if looked is not None:
                looked.set()
            if self.holder != said:
                said = self.holder
                log.info("standby: the Lease is held by %s", said or "nobody")
            await self._sleep(self.timing.retry_period)
        log.info("leading: this replica (%s) holds the Lease", self.identity)

    async def hold(self) -> None:
        """Renew the Lease every retry period while leading. Never returns: raises
        `LeadershipLost` once the renew deadline passes or another replica holds it."""
        while True:
            await self._sleep(self.timing.retry_period)
            if self.deadline is None:
                raise LeadershipLost("not leading")
            left = self.deadline - self.monotonic()
            if left > 0 and await self._attempt(left):
                continue
            if self.holder not in (None, "", self.identity):
                self.deadline = None
                raise LeadershipLost(f"the Lease is held by {self.holder} now")
            if self.monotonic() >= self.deadline:
                self.deadline = None
                raise LeadershipLost(
                    f"the Lease was not renewed for {self.timing.renew_deadline:.0f}s"
                )

    async def release(self, timeout: float = 5.0) -> None:
        """Give the Lease up (a clean stop, once nothing acts any more): a standby takes
        over at its next look. A failure only costs the standby the lease's expiry."""
        if not self.leading:
            return
        self.deadline = None
        try:
            async with asyncio.timeout(timeout):
                await self._release()
        except (Conflict, ApiError, OSError, TimeoutError) as exc:
            log.warning("could not give the Lease up (it expires instead): %s", exc)

    async def _release(self) -> None:
        current = await self._leases.get()
        if current is None or current.holder != self.identity:
            return
        now = self._wall()
        # client-go's release: no holder, and a duration of 1 s for readers that wait.
        await self._leases.replace(replace(current, holder="", duration=1, acquired=now,
                                           renewed=now))  # fmt: skip
        log.info("gave the Lease up")


class Watchdog:
    """Calls ``on_expired`` once the leader's deadline passes, from a thread of its own:
    the leader must stop acting at once even when its event loop is stuck (a long
    synchronous call, CPU starvation) and the renewal task cannot run to notice."""

    def __init__(
        self,
        deadline: Callable[[], float | None],
        *,
        on_expired: Callable[[], None],
        monotonic: Callable[[], float] = time.monotonic,
        interval: float = 0.1,
    ) -> None:
        self._deadline, self._on_expired = deadline, on_expired
        self._monotonic, self._interval = monotonic, interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="kflow-lease-watchdog",
                                        daemon=True)  # fmt: skip

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        while not self._stopped.wait(self._interval):
            deadline = self._deadline()
            if deadline is not None and self._monotonic() >= deadline:
                self._on_expired()
                return


def exit_now(why: str) -> None:
    """Stop acting at once: end the process (it restarts as a standby). No clean-up:
    whatever it would still do might overlap the next leader."""
    log.critical("lost the leadership (%s): exiting at once", why)
    os._exit(EXIT_LOST)


@dataclass(frozen=True)
class Campaign:
    looked: asyncio.Event
    """The first look at the Lease is over (a replica that won at once need not start a
    standby's work)."""
    won: asyncio.Event
    """This replica holds the Lease (from then on until the campaign ends)."""


@contextlib.asynccontextmanager
async def campaign(
    elector: LeaderElector, *, on_lost: Callable[[str], None] = exit_now
) -> AsyncIterator[Campaign]:
    """Run for the Lease while inside: one task acquires it (`Campaign.won`), then renews
    it, its deadline watched by a `Watchdog`; ``on_lost`` when it cannot be kept; given up
    at the end. Enter it before any kopf starts: kopf's shutdown waits for, then cancels,
    every task started after kopf did, and the election must outlive a standby's kopf and
    go on renewing while the leader's stops."""
    state = Campaign(looked=asyncio.Event(), won=asyncio.Event())

    async def run() -> None:
        try:
            await elector.acquire(state.looked)
            state.looked.set()
            state.won.set()
            await elector.hold()
        except LeadershipLost as exc:
            on_lost(str(exc))

    watchdog = Watchdog(lambda: elector.deadline, on_expired=lambda: on_lost("renew deadline"),
                        monotonic=elector.monotonic)  # fmt: skip
    task = asyncio.create_task(run(), name="kflow-leader-election")
    watchdog.start()
    try:
        yield state
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        watchdog.stop()
        await elector.release()
