"""The controller's bookkeeping, pure: which API errors are worth retrying, the back-off
of kflow's own retries, the pod executor's state machine, a run's record and its timers."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from kflow._errors import ApiError, KflowError
from kflow._retry import backoff
from kflow.apierrors import ApiError as ReExported
from kflow.apierrors import error_from
from kflow.controller.pod_states import IllegalTransition, PodEvent, PodSlot, PodState
from kflow.controller.runs import Purpose, RunRef, TimerKey, TrackedRun


@pytest.mark.parametrize(("status", "permanent"), [
    (400, True), (403, True), (422, True),
    (0, False), (404, False), (409, False), (429, False), (500, False), (503, False),
])  # fmt: skip
def test_api_errors_say_whether_the_same_request_is_refused_again(
    status: int, permanent: bool
) -> None:
    assert ApiError(status, "no").permanent is permanent
    assert error_from(status, '{"message": "no"}').permanent is permanent


def test_api_error_is_one_type_outside_kflows_own_errors() -> None:
    assert ReExported is ApiError
    error = error_from(422, '{"kind": "Status", "message": "spec.x: Invalid value"}')
    assert (error.status, error.message) == (422, "spec.x: Invalid value")
    assert not isinstance(error, KflowError)  # `except KflowError` refusals pass it on


def test_backoff_doubles_from_two_seconds_up_to_its_cap() -> None:
    assert [backoff(n) for n in range(1, 8)] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert backoff(5, cap=30.0) == 30.0
    assert backoff(0) == backoff(1) == 2.0


def test_backoff_takes_any_factor_and_any_count() -> None:
    assert [backoff(n, factor=1.5, cap=30.0) for n in (1, 2, 3)] == [2.0, 3.0, 4.5]
    assert backoff(10**6, factor=1.5, cap=30.0) == 30.0  # a count that never resets
    assert backoff(3, first=1.0, factor=3.0, cap=100.0) == 9.0


# -- the pod executor's state machine ---------------------------------------------------

IDLE, DISPATCHING, RUNNING, STOPPING = (
    PodState.IDLE, PodState.DISPATCHING, PodState.RUNNING, PodState.STOPPING,
)  # fmt: skip


def test_a_segment_pod_is_dispatched_runs_and_ends() -> None:
    slot = PodSlot().step(PodEvent.DISPATCH)
    assert (slot.state, slot.pod, slot.live) == (DISPATCHING, None, False)
    slot = slot.step(PodEvent.PLACED, "run-0123abcd-s1")
    assert (slot.state, slot.pod, slot.live) == (RUNNING, "run-0123abcd-s1", True)
    assert slot.step(PodEvent.ENDED) == PodSlot()


def test_a_dispatch_may_end_without_a_pod() -> None:
    assert PodSlot().step(PodEvent.DISPATCH).step(PodEvent.ABANDONED) == PodSlot(IDLE)


def test_a_cancel_stops_the_running_pod_and_its_end_leaves_the_run_idle() -> None:
    running = PodSlot(RUNNING, "p")
    stopping = running.step(PodEvent.CANCEL)
    assert stopping == PodSlot(STOPPING, "p")
    assert stopping.step(PodEvent.CANCEL) == stopping  # lease taken, then the Pod killed
    assert stopping.step(PodEvent.ENDED) == PodSlot(IDLE)


@pytest.mark.parametrize(("state", "event"), [
    (IDLE, PodEvent.PLACED), (IDLE, PodEvent.ABANDONED), (IDLE, PodEvent.CANCEL),
    (IDLE, PodEvent.ENDED),
    (DISPATCHING, PodEvent.DISPATCH), (DISPATCHING, PodEvent.CANCEL),
    (DISPATCHING, PodEvent.ENDED),
    (RUNNING, PodEvent.DISPATCH), (RUNNING, PodEvent.PLACED), (RUNNING, PodEvent.ABANDONED),
    (STOPPING, PodEvent.DISPATCH), (STOPPING, PodEvent.PLACED),
    (STOPPING, PodEvent.ABANDONED),
])  # fmt: skip
def test_every_other_transition_is_refused(state: PodState, event: PodEvent) -> None:
    slot = PodSlot(state, "p" if state in (RUNNING, STOPPING) else None)
    with pytest.raises(IllegalTransition):
        slot.step(event, "q" if event is PodEvent.PLACED else None)


def test_a_slot_names_a_pod_exactly_when_one_runs() -> None:
    with pytest.raises(IllegalTransition):
        PodSlot(RUNNING)
    with pytest.raises(IllegalTransition):
        PodSlot(IDLE, "p")
    with pytest.raises(IllegalTransition):  # placing needs the Pod's name, nothing else does
        PodSlot(DISPATCHING).step(PodEvent.PLACED)
    with pytest.raises(IllegalTransition):
        PodSlot(RUNNING, "p").step(PodEvent.ENDED, "p")


# -- the run's record: its timers -------------------------------------------------------

REF = RunRef(namespace="ns", name="r", uid=str(uuid.UUID(int=7)))


async def test_a_record_keeps_one_timer_per_key_and_drops_it_when_it_fires() -> None:
    record = TrackedRun(REF)
    fired: list[str] = []
    key = TimerKey(Purpose.ANNOTATIONS)
    record.arm(key, 10.0, lambda: fired.append("first"))
    record.arm(key, 0.0, lambda: fired.append("second"))  # replaces the first
    assert record.armed(key)
    await asyncio.sleep(0.01)
    assert fired == ["second"] and not record.armed(key)
    assert record.run_id == uuid.UUID(int=7) and not record.adopted


async def test_closing_a_record_cancels_every_timer_and_a_pods_timers_go_with_it() -> None:
    record = TrackedRun(REF)
    fired: list[TimerKey] = []
    keys = [
        TimerKey(Purpose.ADOPTION),
        TimerKey(Purpose.POD_START, "p1"),
        TimerKey(Purpose.POD_GONE, "p1"),
        TimerKey(Purpose.POD_START, "p2"),
    ]
    for key in keys:
        record.arm(key, 0.0, lambda key=key: fired.append(key))
    record.disarm_pod("p1")
    assert set(record.timers) == {keys[0], keys[3]}
    record.close()
    await asyncio.sleep(0.01)
    assert fired == [] and record.timers == {}
