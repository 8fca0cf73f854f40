"""When to retry a request and how long to wait first.

Only failures that a later attempt can fix are retried: the connection could not be made or broke
(network errors), the service is overloaded (429) or its engine is not ready yet (503). Every other 4xx
describes the request itself, so repeating it would only fail again. Waits grow exponentially with jitter
so that many clients restarted together do not hit the service in lock-step; a ``Retry-After`` from the
service wins over the computed wait, because the service knows when it will be ready.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import httpx

#: Statuses worth repeating: overload and engine-not-ready.
RETRY_STATUSES: frozenset[int] = frozenset({429, 503})
#: Retries by default. With the default waits (0.5 s doubling to 8 s, jitter taking off up to half),
#: the last of five retries comes 7.75 to 15.5 s after the first attempt: later than a gateway takes to
#: restart (a rolling update, a crash-restart), so a script does not fail across one.
DEFAULT_MAX_RETRIES = 5


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff parameters.

    Attributes:
        max_retries: retries after the first attempt (0 disables retrying).
        initial_delay: wait before the first retry, in seconds.
        max_delay: ceiling of the exponential wait, in seconds.
        max_retry_after: ceiling on an honoured ``Retry-After``, so that a misconfigured proxy cannot park a
            script for an hour.
        jitter: fraction of the wait that is randomised (0 = none, 1 = "full jitter").
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    initial_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.initial_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("retry delays must be >= 0")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")

    def delay(self, retry_number: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry_number`` (1-based).

        Args:
            retry_number: 1 for the first retry, 2 for the second...
            retry_after: the service's ``Retry-After`` in seconds, if it sent one.
        """
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        base = min(self.initial_delay * (2 ** (retry_number - 1)), self.max_delay)
        return base * (1.0 - self.jitter * self.rng.random())


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: either delta-seconds or an HTTP date; None if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)  # noqa: UP017 (client supports 3.10)
    current = now or datetime.now(timezone.utc)  # noqa: UP017
    return max((when - current).total_seconds(), 0.0)


def is_retryable_exception(exc: Exception) -> bool:
    """True for transport failures a new attempt may fix.

    Connect errors and connect timeouts never reached the service. Read/write errors and dropped
    connections are retried too because analysing a study has no side effect on the service. A read
    timeout is *not* retried: the service is probably still working on a large study, and sending it again
    would only double its load.
    """
    return isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ConnectTimeout))
