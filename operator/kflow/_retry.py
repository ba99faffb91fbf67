"""`RetryPolicy`: how often, and how patiently, a failing step is tried again; `backoff`:
the same curve for kflow's own retries (a segment the store failed, a lost connection).

Attempts are durable: each failed attempt is recorded before the backoff, so a crash
during a backoff resumes with the right attempt count instead of starting over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from kflow._errors import NonRetryable

__all__ = ["RetryPolicy", "backoff"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry settings for one step (``ctx.step(..., retry=RetryPolicy(...))``)."""

    max_attempts: int = 3
    """Attempts in all, the first included; 1 means no retry."""

    initial_interval: timedelta = timedelta(seconds=1)
    """Backoff before the second attempt."""

    backoff_coefficient: float = 2.0
    """Each further backoff is the previous one times this."""

    max_interval: timedelta = timedelta(minutes=5)
    """Upper bound of a single backoff."""

    non_retryable: tuple[type[BaseException], ...] = field(default=())
    """Exception types that fail the step at once. `NonRetryable` always does."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1")
        if self.backoff_coefficient < 1:
            raise ValueError("RetryPolicy.backoff_coefficient must be at least 1")
        if self.initial_interval < timedelta(0) or self.max_interval < timedelta(0):
            raise ValueError("RetryPolicy intervals must not be negative")

    def backoff(self, failed_attempts: int) -> timedelta:
        """The wait after ``failed_attempts`` failures (1 = after the first attempt)."""
        seconds = self.initial_interval.total_seconds() * (
            self.backoff_coefficient ** max(0, failed_attempts - 1)
        )
        return min(timedelta(seconds=seconds), self.max_interval)

    def should_retry(self, error: BaseException, failed_attempts: int) -> bool:
        if isinstance(error, (NonRetryable, *self.non_retryable)):
            return False
        return failed_attempts < self.max_attempts


NO_RETRY = RetryPolicy(max_attempts=1)


def backoff(failures: int, *, first: float = 2.0, factor: float = 2.0, cap: float = 60.0) -> float:
    """Seconds to wait after ``failures`` failures in a row (1 = after the first): ``first``,
    then each wait ``factor`` times the one before, never more than ``cap``.

    For what kflow retries itself, outside any step: a segment the store or a lease
    stopped, a segment Pod that failed, the progress listener's connection, a deletion
    that must wait. Any number of failures is fine (a count that never resets included).
    """
    try:
        seconds = first * factor ** max(failures - 1, 0)
    except OverflowError:  # factor ** a very large count
        return cap
    return min(seconds, cap)
