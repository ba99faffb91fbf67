"""Leader election (`kflow.controller.leader`): the algorithm over an in-memory Lease with
the API server's optimistic concurrency, on a clock the tests move; the watchdog; the
Lease's wire form; the settings that switch it on."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from kflow._errors import ApiError
from kflow.controller.kube_lease import lease_body, parse_lease
from kflow.controller.leader import (
    Conflict,
    LeaderElector,
    LeadershipLost,
    LeaseRecord,
    Timing,
    Watchdog,
    campaign,
    identity,
)

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
TIMING = Timing(duration=8, renew_deadline=5, retry_period=1)


class Stopped(Exception):
    """The test's time is up (raised by `Clock.sleep`)."""


class Clock:
    """Monotonic and wall time the test moves; `sleep` moves both."""

    def __init__(self) -> None:
        self.t = 100.0
        self.skew = 0.0
        self.stop_at = float("inf")

    def monotonic(self) -> float:
        return self.t

    def wall(self) -> datetime:
        return EPOCH + timedelta(seconds=self.t + self.skew)

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        if self.t > self.stop_at:
            raise Stopped
        await asyncio.sleep(0)


class MemoryLeases:
    """A `LeaseStore` in memory: versions and conflicts as the API server has them."""

    def __init__(self) -> None:
        self.record: LeaseRecord | None = None
        self.writes = 0
        self.down = False

    def _reachable(self) -> None:
        if self.down:
            raise ApiError(0, "cannot reach the API server")

    async def get(self) -> LeaseRecord | None:
        self._reachable()
        read = self.record
        await asyncio.sleep(0)  # another replica may read (or write) before this one goes on
        return read

    async def create(self, record: LeaseRecord) -> LeaseRecord:
        self._reachable()
        if self.record is not None:
            raise Conflict("already exists")
        return self._write(record)

    async def replace(self, record: LeaseRecord) -> LeaseRecord:
        self._reachable()
        if self.record is None or record.version != self.record.version:
            raise Conflict("the object has been modified")
        return self._write(record)

    def _write(self, record: LeaseRecord) -> LeaseRecord:
        self.writes += 1
        self.record = replace(record, version=str(self.writes))
        return self.record

    def taken_by(self, holder: str) -> None:
        """Another replica writes itself in (as one that thinks the Lease expired would)."""
        assert self.record is not None
        self._write(replace(self.record, holder=holder))


def replica(name: str, leases: MemoryLeases, clock: Clock) -> LeaderElector:
    return LeaderElector(leases, identity=name, timing=TIMING, monotonic=clock.monotonic,
                         wall=clock.wall, sleep=clock.sleep)  # fmt: skip


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def leases() -> MemoryLeases:
    return MemoryLeases()


async def test_acquires_a_lease_nobody_made(clock: Clock, leases: MemoryLeases) -> None:
    a = replica("a", leases, clock)
    await a.acquire()
    assert a.leading and a.deadline == clock.t + TIMING.renew_deadline
    assert leases.record == LeaseRecord("a", 8, clock.wall(), clock.wall(), 0, version="1")


async def test_a_standby_never_takes_a_lease_that_is_renewed(
    clock: Clock, leases: MemoryLeases
) -> None:
    a, b = replica("a", leases, clock), replica("b", leases, clock)
    await a.acquire()
    clock.skew = -3600.0  # b's renewTime would look an hour old: only b's own clock counts
    for second in range(1, 71):  # a renews every 7 s (within the 8 s duration)
        clock.t += 1
        if second % 7 == 0:
            assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()
        assert b.holder == "a" and not b.leading
    assert leases.record is not None and leases.record.holder == "a"


async def test_a_standby_takes_an_expired_lease_a_duration_after_it_last_saw_it_change(
    clock: Clock, leases: MemoryLeases
) -> None:
    a, b = replica("a", leases, clock), replica("b", leases, clock)
    await a.acquire()
    started = clock.t
    clock.t += 0.5
    assert not await b.try_acquire_or_renew()  # b sees a's record from here on; a dies
    while not await b.try_acquire_or_renew():
        clock.t += 1
    assert clock.t - started == 8.5  # 0.5 + the lease's 8 s, on b's clock
    assert leases.record is not None
    assert (leases.record.holder, leases.record.transitions) == ("b", 1)
    assert leases.record.acquired == clock.wall() and b.leading


async def test_a_given_up_lease_is_taken_at_once(clock: Clock, leases: MemoryLeases) -> None:
    a, b = replica("a", leases, clock), replica("b", leases, clock)
    await a.acquire()
    assert not await b.try_acquire_or_renew()
    await a.release()
    assert not a.leading
    assert leases.record is not None and (leases.record.holder, leases.record.duration) == ("", 1)
    assert await b.try_acquire_or_renew()  # no wait for the 8 s
    assert leases.record.holder == "b" and leases.record.transitions == 1


async def test_of_two_standbys_racing_for_an_expired_lease_one_wins(
    clock: Clock, leases: MemoryLeases
) -> None:
    a, b, c = (replica(name, leases, clock) for name in "abc")
    await a.acquire()
    assert not await b.try_acquire_or_renew() and not await c.try_acquire_or_renew()
    clock.t += 9
    results = await asyncio.gather(
        b.try_acquire_or_renew(), c.try_acquire_or_renew(), return_exceptions=True
    )
    assert sorted(map(repr, results)) == [repr(Conflict("the object has been modified")), "True"]
    assert [r.leading for r in (b, c)].count(True) == 1


async def test_the_leader_keeps_renewing(clock: Clock, leases: MemoryLeases) -> None:
    a = replica("a", leases, clock)
    await a.acquire()
    clock.stop_at = clock.t + 30
    with pytest.raises(Stopped):
        await a.hold()
    assert leases.writes == 1 + 30  # one renewal a retry period
    assert a.leading and a.deadline is not None and a.deadline > clock.stop_at


async def test_a_leader_that_cannot_renew_gives_up_at_its_deadline_before_anyone_takes_over(
    clock: Clock, leases: MemoryLeases
) -> None:
    a, b = replica("a", leases, clock), replica("b", leases, clock)
    await a.acquire()
    renewed = clock.t
    assert not await b.try_acquire_or_renew()  # the last record b sees
    leases.down = True  # for a only, say: a network partition
    with pytest.raises(LeadershipLost, match="not renewed for 5s"):
        await a.hold()
    assert clock.t == renewed + TIMING.renew_deadline and not a.leading
    gave_up = clock.t
    leases.down = False
    while not await b.try_acquire_or_renew():
        clock.t += 1
    assert clock.t - gave_up >= TIMING.duration - TIMING.renew_deadline  # never both at once


async def test_a_leader_whose_lease_another_replica_holds_stops_at_once(
    clock: Clock, leases: MemoryLeases
) -> None:
    a = replica("a", leases, clock)
    await a.acquire()
    leases.taken_by("c")
    with pytest.raises(LeadershipLost, match="held by c"):
        await a.hold()
    assert clock.t == 101 and not a.leading  # its first renewal saw it
    await a.release()  # nothing to give up: c's lease stays c's
    assert leases.record is not None and leases.record.holder == "c"


async def test_a_campaign_acquires_renews_then_gives_the_lease_up(
    clock: Clock, leases: MemoryLeases
) -> None:
    a, b = replica("a", leases, clock), replica("b", leases, clock)
    await a.acquire()
    lost: list[str] = []
    async with campaign(b, on_lost=lost.append) as election:
        await election.looked.wait()
        assert not election.won.is_set()  # a holds the Lease
        await a.release()
        await election.won.wait()
        writes = leases.writes
        for _ in range(20):  # the campaign renews meanwhile
            await asyncio.sleep(0)
        assert leases.writes > writes and leases.record is not None
        assert leases.record.holder == "b"
    assert lost == [] and leases.record.holder == "" and not b.leading


async def test_a_campaign_calls_on_lost_when_the_lease_cannot_be_renewed(
    clock: Clock, leases: MemoryLeases
) -> None:
    a = replica("a", leases, clock)
    lost = asyncio.Event()
    why: list[str] = []
    loop = asyncio.get_running_loop()

    def on_lost(reason: str) -> None:  # from the campaign's task, or the watchdog's thread
        why.append(reason)
        loop.call_soon_threadsafe(lost.set)

    async with campaign(a, on_lost=on_lost) as election:
        await election.won.wait()
        leases.down = True
        await asyncio.wait_for(lost.wait(), 5)
    assert "not renewed" in why[0] or why[0] == "renew deadline"


def test_the_watchdog_fires_once_the_deadline_passes_and_not_before() -> None:
    now, deadline = [0.0], [10.0]
    fired = threading.Event()
    dog = Watchdog(lambda: deadline[0], on_expired=fired.set, monotonic=lambda: now[0],
                   interval=0.01)  # fmt: skip
    dog.start()
    try:
        time.sleep(0.1)
        assert not fired.is_set()
        now[0] = 10.0
        assert fired.wait(2)
    finally:
        dog.stop()


def test_the_watchdog_is_quiet_on_standby_and_once_stopped() -> None:
    fired = threading.Event()
    dog = Watchdog(lambda: None, on_expired=fired.set, interval=0.01)
    dog.start()
    time.sleep(0.1)
    dog.stop()
    assert not fired.is_set()


def test_the_lease_on_the_wire() -> None:
    record = LeaseRecord("kflow-0_ab12cd34", 8, EPOCH, EPOCH + timedelta(microseconds=5), 2,
                         version="41")  # fmt: skip
    body = lease_body("kflow-operator", record)
    assert body["metadata"] == {"name": "kflow-operator", "resourceVersion": "41"}
    assert body["spec"] == {
        "holderIdentity": "kflow-0_ab12cd34", "leaseDurationSeconds": 8,
        "acquireTime": "2026-01-01T00:00:00.000000Z",
        "renewTime": "2026-01-01T00:00:00.000005Z", "leaseTransitions": 2,
    }  # fmt: skip
    assert parse_lease(body) == record
    read = {"metadata": {"name": "l", "resourceVersion": "7", "labels": {"a": "b"}}, "spec": {}}
    assert parse_lease(read) == LeaseRecord("", 0, None, None, 0, version="7")
    kept = lease_body("l", replace(record, version="7"), read)["metadata"]
    assert kept == {"name": "l", "resourceVersion": "7", "labels": {"a": "b"}}


def test_identities_name_the_pod_and_differ_per_process() -> None:
    first, second = identity("kflow-operator-7d9f-x2"), identity("kflow-operator-7d9f-x2")
    assert first.startswith("kflow-operator-7d9f-x2_") and first != second
    assert "-" in identity(None)  # hostname-pid_suffix


def test_leader_election_needs_the_leases_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from kflow.settings import OperatorSettings

    monkeypatch.setenv("KFLOW_DSN", "postgresql://kflow@db/kflow")
    monkeypatch.setenv("KFLOW_LEADER_ELECTION", "true")
    with pytest.raises(ValidationError, match="needs KFLOW_LEADER_NAMESPACE"):
        OperatorSettings()
    monkeypatch.setenv("KFLOW_LEADER_NAMESPACE", "kflow-system")
    settings = OperatorSettings()
    assert Timing.from_settings(settings) == TIMING and settings.leader_lease == "kflow-operator"
    monkeypatch.setenv("KFLOW_LEADER_RENEW_DEADLINE", "9")
    with pytest.raises(ValidationError, match="RENEW_DEADLINE < KFLOW_LEADER_LEASE_DURATION"):
        OperatorSettings()
