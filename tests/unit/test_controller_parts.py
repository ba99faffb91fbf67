"""Pure parts of the controller: annotations, the status summary, the timer wheel, when
the status mirror writes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kflow import Clock, RunStatus, StepState, StepStatus, VirtualClock
from kflow._clock import SystemClock
from kflow._models import RunRecord, StepKind, SuspendKind
from kflow.controller.annotations import Action, EventAnnotation, Rejected, parse_annotations
from kflow.controller.bodies import run_status
from kflow.controller.mirror import StatusMirror
from kflow.controller.runs import RunRef
from kflow.controller.status import build_status
from kflow.controller.timers import TimerWheel
from kflow.resources import EventDelivery, ExecutorView

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def test_annotations_are_parsed_into_events_actions_and_refusals() -> None:
    found = parse_annotations(
        {
            "event.kflow.io/approved": '{"by": "ana"}',
            "event.kflow.io/ping": "",
            "event.kflow.io/broken": "{not json",
            "event.kflow.io/big": '"' + "x" * 100 + '"',
            "event.kflow.io/bad name": "1",
            "kflow.io/cancel": "customer asked",
            "unrelated/annotation": "x",
        },
        max_bytes=64,
    )
    by_key = {item.key: item for item in found}
    assert set(by_key) == {
        "event.kflow.io/approved", "event.kflow.io/ping", "event.kflow.io/broken",
        "event.kflow.io/big", "event.kflow.io/bad name", "kflow.io/cancel",
    }  # fmt: skip
    approved = by_key["event.kflow.io/approved"]
    assert isinstance(approved, EventAnnotation) and approved.payload == {"by": "ana"}
    ping = by_key["event.kflow.io/ping"]
    assert isinstance(ping, EventAnnotation) and ping.payload is None
    broken = by_key["event.kflow.io/broken"]
    assert isinstance(broken, Rejected) and broken.reason.startswith("payload is not JSON")
    big = by_key["event.kflow.io/big"]
    assert isinstance(big, Rejected) and "over the 64 limit" in big.reason
    assert isinstance(by_key["event.kflow.io/bad name"], Rejected)
    cancel = by_key["kflow.io/cancel"]
    assert isinstance(cancel, Action) and cancel.verb == "cancel"


def test_dedupe_keys_follow_name_and_value() -> None:
    def key(name: str, value: str) -> str:
        (item,) = parse_annotations({f"event.kflow.io/{name}": value}, max_bytes=100)
        assert isinstance(item, EventAnnotation)
        return item.dedupe_key

    assert key("a", "1") == key("a", "1")
    assert key("a", "1") != key("a", "2")
    assert key("a", "1") != key("b", "1")


def _run(**overrides: object) -> RunRecord:
    fields: dict[str, object] = {
        "run_id": uuid.UUID(int=1), "workflow_name": "w", "workflow_version": 1,
        "signature": "f" * 64, "status": RunStatus.RUNNING,
    }  # fmt: skip
    fields.update(overrides)
    return RunRecord(**fields)  # type: ignore[arg-type]


def _steps(n: int) -> list[StepState]:
    return [
        StepState(key=f"s#{i}", name="s", status=StepStatus.COMPLETED, attempts=1, seq=i)
        for i in range(n)
    ]


def test_status_of_a_long_run_is_bounded() -> None:
    history = [*_steps(5000), StepState(key="last", name="last", attempts=2)]
    status = build_status(
        _run(output={"blob": "x" * (2 * 1024 * 1024)}),
        history,
        [],
        now=NOW,
        generation=3,
        max_steps=50,
        max_output_bytes=16 * 1024,
    )
    assert len(status.steps) == 50 and status.steps_omitted == 4951
    assert status.current_step == "last"
    assert status.output is None and status.output_truncated
    assert len(status.model_dump_json(by_alias=True)) < 20_000
    assert status.observed_generation == 3


def test_status_conditions_and_waiting() -> None:
    run = _run(
        status=RunStatus.WAITING,
        suspend_kind=SuspendKind.EVENT,
        waiting_event="approved",
        wake_at=NOW + timedelta(days=1),
    )
    wait = StepState(key="@event:approved#1", name="approved", kind=StepKind.EVENT,
                     status=StepStatus.WAITING)  # fmt: skip
    first = build_status(run, [wait], [], now=NOW, generation=1)
    assert first.waiting is not None and first.waiting.event == "approved"
    assert first.current_step == "@event:approved#1"
    conditions = {c.type: (c.status, c.reason) for c in first.conditions}
    assert conditions == {
        "Succeeded": ("Unknown", "Waiting"),
        "Failed": ("False", "Waiting"),
        "Waiting": ("True", "Event"),
        "Blocked": ("False", "NotBlocked"),
    }
    assert {c.observed_generation for c in first.conditions} == {1}
    later = build_status(run, [wait], [], now=NOW + timedelta(hours=1), generation=1,
                         previous=first)  # fmt: skip
    assert later.conditions == first.conditions  # no transition, same times
    done = build_status(_run(status=RunStatus.COMPLETED, output=1), [], [],
                        now=NOW + timedelta(hours=2), generation=1, previous=later)  # fmt: skip
    ready = next(c for c in done.conditions if c.type == "Succeeded")
    assert ready.status == "True" and ready.last_transition_time == NOW + timedelta(hours=2)
    assert done.current_step is None and done.waiting is None
    cancelled = build_status(_run(status=RunStatus.COMPENSATED), [wait], [], now=NOW,
                             generation=1)  # fmt: skip
    assert [s.state for s in cancelled.steps] == ["interrupted"]  # not still "waiting"
    assert first.steps[0].state == "waiting"


@pytest.mark.parametrize(
    ("phase", "succeeded", "failed"),
    [
        (RunStatus.CREATED, "Unknown", "False"),
        (RunStatus.RUNNING, "Unknown", "False"),
        (RunStatus.COMPENSATING, "Unknown", "False"),
        (RunStatus.BLOCKED_SIGNATURE_MISMATCH, "Unknown", "False"),
        (RunStatus.COMPLETED, "True", "False"),
        (RunStatus.FAILED, "False", "True"),
        (RunStatus.COMPENSATED, "False", "True"),
        (RunStatus.CANCELLED_BY_OPERATOR, "False", "True"),
        (RunStatus.RETIRED_UNRESUMABLE, "False", "True"),
    ],
)
def test_terminal_conditions_by_phase(phase: RunStatus, succeeded: str, failed: str) -> None:
    """One condition to wait on for success and one for failure; each reason is the
    phase, and the run's error is the message only of the condition that reports it."""
    run = _run(status=phase, error="boom: card declined")
    status = build_status(run, [], [], now=NOW, generation=3)
    by_type = {c.type: c for c in status.conditions}
    assert (by_type["Succeeded"].status, by_type["Failed"].status) == (succeeded, failed)
    assert by_type["Succeeded"].reason == by_type["Failed"].reason == phase.value
    messages = {c.type: c.message for c in status.conditions if c.message}
    if failed == "True":
        assert messages == {"Succeeded": "boom: card declined", "Failed": "boom: card declined"}
    elif phase.is_blocked:
        assert messages == {"Blocked": "boom: card declined"}
    else:  # nothing holds that the error explains: Blocked=False says nothing
        assert messages == {}
    assert all(c.observed_generation == 3 for c in status.conditions)


async def test_timer_wheel_fires_once_each_in_order() -> None:
    clock = SystemClock()
    fired: list[uuid.UUID] = []
    wheel = TimerWheel(clock, fire=fired.append)
    task = asyncio.create_task(wheel.run())
    a, b, c = (uuid.UUID(int=i) for i in (1, 2, 3))
    now = clock.now()
    wheel.schedule(a, now + timedelta(milliseconds=150))
    wheel.schedule(b, now + timedelta(milliseconds=50))
    wheel.schedule(c, now + timedelta(milliseconds=100))
    wheel.schedule(a, now + timedelta(milliseconds=120))  # replaces a's first timer
    wheel.cancel(c)
    await asyncio.sleep(0.4)
    task.cancel()
    assert fired == [b, a]
    assert len(wheel) == 0


async def test_timer_wheel_fires_past_times_at_once() -> None:
    clock = VirtualClock(NOW)
    fired: list[uuid.UUID] = []
    wheel = TimerWheel(clock, fire=fired.append)
    task = asyncio.create_task(wheel.run())
    wheel.schedule(uuid.UUID(int=7), NOW - timedelta(days=3))
    await asyncio.sleep(0.01)
    task.cancel()
    assert fired == [uuid.UUID(int=7)]


class _Recorder:
    """The two outside calls a `StatusMirror` makes: the store read and the PATCH."""

    def __init__(self) -> None:
        self.store = self
        self.phase = RunStatus.RUNNING
        self.history: list[StepState] = []
        self.fields: dict[str, object] = {}
        self.inbox: list[dict[str, Any]] = []
        self.patched: list[tuple[float, str]] = []
        self.bodies: list[dict[str, Any]] = []

    async def snapshot(self, run_id: uuid.UUID, *, last_steps: int) -> tuple[object, ...]:
        run = _run(run_id=run_id, status=self.phase, **self.fields)
        return run, self.history, len(self.history), self.inbox

    async def patch_run_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.patched.append((asyncio.get_running_loop().time(), str(status["phase"])))
        self.bodies.append(status)


def _mirror(
    fake: _Recorder, interval: float, executor: Callable[[uuid.UUID], ExecutorView | None] = (
        lambda _: None
    ), clock: Clock | None = None,
) -> StatusMirror:  # fmt: skip
    ref = RunRef(namespace="ns", name="r", uid=str(uuid.UUID(int=1)))
    return StatusMirror(
        engine=fake, kube=fake, clock=clock or SystemClock(),  # type: ignore[arg-type]
        interval=timedelta(seconds=interval), ref=lambda _: ref, executor=executor,
        spec_changed=lambda _: None,
        on_rejected=lambda *_: asyncio.sleep(0), max_steps=50, max_output_bytes=1024,
    )  # fmt: skip


async def test_mirror_coalesces_touches_and_honours_deadlines() -> None:
    run_id = uuid.UUID(int=1)
    fake = _Recorder()
    mirror = _mirror(fake, interval=0.05)
    loop = asyncio.get_running_loop()

    # Queued (a late deadline), then done: one PATCH, at once, with the end state.
    start = loop.time()
    mirror.touch(run_id, within=5.0)
    await asyncio.sleep(0.1)
    assert fake.patched == []
    fake.phase = RunStatus.COMPLETED
    mirror.touch(run_id, urgent=True)
    await asyncio.sleep(0.02)
    assert [phase for _, phase in fake.patched] == ["Completed"]
    assert fake.patched[0][0] - start < 0.5

    # A record's touch brings a late deadline forward to the interval.
    fake.phase = RunStatus.WAITING
    start = loop.time()
    mirror.touch(run_id, within=5.0)
    for _ in range(10):
        mirror.touch(run_id)
    await asyncio.sleep(0.3)
    assert [phase for _, phase in fake.patched] == ["Completed", "Waiting"]
    assert 0.04 <= fake.patched[1][0] - start < 0.3

    # Left alone, a late deadline still comes.
    fake.phase = RunStatus.RUNNING
    start = loop.time()
    mirror.touch(run_id, within=0.2)
    await asyncio.sleep(0.4)
    assert [phase for _, phase in fake.patched][-1] == "Running"
    assert 0.19 <= fake.patched[-1][0] - start < 0.4


async def test_mirror_starts_from_the_live_status_and_keeps_little_of_finished_runs() -> None:
    run_id = uuid.UUID(int=1)
    fake = _Recorder()
    mirror = _mirror(fake, interval=0.01)
    fake.phase = RunStatus.WAITING
    live = build_status(_run(status=RunStatus.WAITING), [], [], now=NOW, generation=None)

    # Adopted after a restart: the live status is current, so nothing is written.
    body = {"status": live.model_dump(mode="json", by_alias=True, exclude_none=True)}
    mirror.seed(run_id, run_status(body))  # as the handler reads it from the watch
    mirror.touch(run_id, urgent=True)
    await asyncio.sleep(0.05)
    assert fake.patched == []

    # The run ends: conditions that did not change keep their time from the live status.
    fake.phase = RunStatus.COMPLETED
    mirror.touch(run_id, urgent=True)
    await asyncio.sleep(0.05)
    (status,) = fake.bodies
    times = {c["type"]: c["lastTransitionTime"] for c in status["conditions"]}
    assert times["Blocked"] == NOW.isoformat().replace("+00:00", "Z")
    assert times["Succeeded"] != times["Blocked"]

    # Finished and written: touching it again writes nothing; a refused event does.
    mirror.touch(run_id, urgent=True)
    await asyncio.sleep(0.05)
    assert len(fake.bodies) == 1
    mirror.rejected[run_id] = [EventDelivery(name="late", state="rejected", message="finished")]
    mirror.touch(run_id, urgent=True)
    await asyncio.sleep(0.05)
    assert len(fake.bodies) == 2 and fake.bodies[1]["events"][0]["name"] == "late"


async def test_a_finished_run_ending_again_differently_is_written() -> None:
    run_id = uuid.UUID(int=1)
    fake = _Recorder()
    mirror = _mirror(fake, interval=0.01)
    fake.phase = RunStatus.FAILED
    fake.history = [StepState(key="pay", name="pay", status=StepStatus.FAILED, attempts=1)]
    mirror.touch(run_id, urgent=True)
    await asyncio.sleep(0.05)
    assert len(fake.patched) == 1
    # Retried, and Failed again in the same way but with other step records (the status in
    # between never written): what is kept of a finished run still tells them apart.
    fake.history = [StepState(key="pay", name="pay", status=StepStatus.FAILED, attempts=2)]
    mirror.touch(run_id, urgent=True)
    await asyncio.sleep(0.05)
    assert len(fake.patched) == 2
    mirror.touch(run_id, urgent=True)  # nothing changed: nothing written
    await asyncio.sleep(0.05)
    assert len(fake.patched) == 2


async def test_a_key_gone_from_a_status_object_is_written_as_null() -> None:
    """A merge patch keeps what it does not name: the Pod that ended (and a deadline that
    went) must be written as null, or the object keeps showing them."""
    run_id = uuid.UUID(int=1)
    fake = _Recorder()
    pod: list[str | None] = ["order-1-s1"]
    mirror = _mirror(fake, 0.01, executor=lambda _: ExecutorView(kind="pod", pod=pod[0]))
    fake.phase = RunStatus.WAITING
    fake.fields = {"suspend_kind": SuspendKind.EVENT, "waiting_event": "go",
                   "wake_at": NOW + timedelta(hours=1)}  # fmt: skip
    mirror.touch(run_id, urgent=True)
    await asyncio.sleep(0.05)
    assert fake.bodies[-1]["executor"]["pod"] == "order-1-s1"
    assert fake.bodies[-1]["waiting"]["until"] is not None
    pod[0] = None  # the segment's Pod ended
    fake.fields = {"suspend_kind": SuspendKind.EVENT, "waiting_event": "go"}  # no deadline
    mirror.touch(run_id, urgent=True)
    await asyncio.sleep(0.05)
    assert fake.bodies[-1]["executor"] == {"kind": "pod", "pod": None, "message": None}
    assert fake.bodies[-1]["waiting"] == {"kind": "event", "until": None, "event": "go"}


async def test_refused_events_are_in_time_order_in_one_form() -> None:
    run_id = uuid.UUID(int=1)
    fake = _Recorder()
    clock = VirtualClock(NOW + timedelta(minutes=2))
    mirror = _mirror(fake, 0.01, clock=clock)
    minute = timedelta(minutes=1)
    fake.inbox = [
        {"id": 1, "name": "confirm", "consumed_by": "@event:confirm#1", "rejected": None,
         "received_at": NOW.isoformat(), "consumed_at": (NOW + minute).isoformat()},
        {"id": 2, "name": "confirm", "consumed_by": "@event:confirm#2",
         "rejected": "event 'confirm': payload does not match Ok: by: Field required",
         "received_at": (NOW + 3 * minute).isoformat(),
         "consumed_at": (NOW + 4 * minute).isoformat()},
        {"id": 3, "name": "confirm", "consumed_by": None, "rejected": None,
         "received_at": None, "consumed_at": None},
    ]  # fmt: skip
    mirror.reject(run_id, "confirm", "payload is not JSON: Expecting value")  # at NOW + 2 min
    mirror.touch(run_id, urgent=True)
    await asyncio.sleep(0.05)
    events = fake.bodies[-1]["events"]
    assert [(e["state"], e.get("message")) for e in events] == [
        ("consumed", None),
        ("rejected", "payload is not JSON: Expecting value"),
        ("rejected", "payload does not match Ok: by: Field required"),
        ("pending", None),  # no time yet: last
    ]
    assert [e.get("at") for e in events[:3]] == [
        (NOW + n * minute).isoformat().replace("+00:00", "Z") for n in (0, 2, 3)
    ]
