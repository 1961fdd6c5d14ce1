"""When to try a failed delivery again, or give up (dead-letter).

The schedule is tenacity's exponential backoff with jitter; the attempt count and the
instance's age live in the queue, so the schedule survives restarts.
"""

from __future__ import annotations

import time

import tenacity

from gateway.config import Retry
from gateway.errors import DeliveryError, PermanentError


def backoff_seconds(policy: Retry, attempt: int) -> float:
    wait = tenacity.wait_exponential_jitter(
        initial=policy.initial_backoff, max=policy.max_backoff, jitter=policy.jitter
    )
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
    state.attempt_number = max(1, attempt)
    return float(wait(state))


def next_attempt(
    policy: Retry, error: DeliveryError, attempts: int, queued_at: float, now: float | None = None
) -> tuple[float | None, str]:
    """(time of the next attempt, or None to dead-letter; why)."""
    now = time.time() if now is None else now
    if isinstance(error, PermanentError):
        return None, "permanent error"
    if attempts >= policy.max_attempts:
        return None, f"gave up after {attempts} attempts"
    if now - queued_at >= policy.max_age_seconds:
        return None, f"gave up after {now - queued_at:.0f} s (retry.max_age_seconds)"
    return now + backoff_seconds(policy, attempts), "transient error"
