"""The controller's bookkeeping rules, pure: which API errors are worth retrying, the
back-off of kflow's own retries."""

from __future__ import annotations

import pytest

from kflow.apierrors import ApiError as ReExported
from kflow.apierrors import error_from
from kflow.errors import ApiError, KflowError
from kflow.retry import backoff


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
