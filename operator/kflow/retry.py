"""`RetryPolicy`: how often, and how patiently, a failing step is tried again.

Attempts are durable: each failed attempt is recorded before the backoff, so a crash
during a backoff resumes with the right attempt count instead of starting over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from kflow.errors import NonRetryable

__all__ = ["RetryPolicy"]


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
