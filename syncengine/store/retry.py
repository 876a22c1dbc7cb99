"""The one retry policy of remote store requests: backoff with full jitter, Retry-After, stall timeouts.

Every request an S3 store sends runs under a :class:`Retrier` built from one
:class:`RetryPolicy`: exponential backoff with full jitter (delay drawn uniformly from
``[0, min(max_delay, base * 2**(n-1))]`` before retry ``n``), a larger base for throttling
(429, S3 ``SlowDown``), ``Retry-After`` honoured, a per-attempt timeout and a *stall*
timeout (no byte moved in either direction for ``stall_timeout`` seconds ends the attempt),
at most ``max_attempts`` attempts, and no new attempt once ``deadline`` seconds have passed.

What is worth another attempt is decided here too (:func:`transient_from_exception`,
:func:`transient_from_status`): connection resets, refusals and drops, timeouts, 429,
500/502/503/504 and the S3 codes meaning the same thing. Everything else (403, 400, 404,
412, …) surfaces at once. docs/S3.md lists the exact parameters.

>>> policy = RetryPolicy(max_attempts=3, base_delay=0.1)
>>> 0.0 <= policy.delay(2, throttled=False, retry_after=None) <= 0.2
True
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import ssl
import sys
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final

import msgspec

from syncengine.errors import ConfigError, StoreUnavailable
from syncengine.settings import env_duration

__all__ = [
    "ENV_PREFIX",
    "AttemptGuard",
    "Retrier",
    "RetryPolicy",
    "TransferCounters",
    "Transient",
    "transient_from_exception",
    "transient_from_status",
]

log = logging.getLogger("syncengine.store.retry")

#: Environment variables ``SYNCENGINE_S3_<FIELD>`` (e.g. ``SYNCENGINE_S3_MAX_ATTEMPTS``)
#: override the defaults of :class:`RetryPolicy`.
ENV_PREFIX: Final = "SYNCENGINE_S3_"

#: HTTP statuses worth another attempt.
RETRYABLE_STATUS: Final = frozenset({429, 500, 502, 503, 504})
#: S3 error codes worth another attempt, whatever their status (S3 sends some as 400/409).
RETRYABLE_CODES: Final = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "BandwidthLimitExceeded",
        "PriorRequestNotComplete",
        "OperationAborted",
        "ConditionalRequestConflict",
        # The body was damaged on the way (the checksum the server computed differs):
        # sending the same bytes again fixes it.
        "BadDigest",
        "XAmzContentSHA256Mismatch",
        "IncompleteBody",
    }
)
#: Codes that mean "slow down": retried with ``throttle_delay`` as the backoff base.
THROTTLE_CODES: Final = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "BandwidthLimitExceeded",
    }
)


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How hard a store tries before giving up (all times in seconds).

    Build it explicitly, or with :meth:`from_env` to let ``SYNCENGINE_S3_*`` environment
    variables override the defaults (tests use that to shorten them).
    """

    #: Attempts per request, the first included.
    max_attempts: int = 10
    #: Backoff base: retry ``n`` waits ``uniform(0, min(max_delay, base_delay * 2**(n-1)))``.
    base_delay: float = 0.25
    #: Cap of one backoff wait.
    max_delay: float = 20.0
    #: Backoff base after a throttling answer (429, ``SlowDown``).
    throttle_delay: float = 1.0
    #: Longest ``Retry-After`` honoured (a longer one is capped to this).
    max_retry_after: float = 60.0
    #: Establishing a TCP (and TLS) connection.
    connect_timeout: float = 10.0
    #: One attempt, start to end, however healthy (a backstop: transfers of multi-GiB
    #: bodies are bounded by the stall timeout, not this).
    attempt_timeout: float = 900.0
    #: No byte sent or received for this long (including the wait for the response
    #: headers) ends the attempt, which is then retried.
    stall_timeout: float = 60.0
    #: No attempt starts (and no backoff wait ends) later than this after the first one.
    #: It bounds retrying, not a healthy attempt in progress.
    deadline: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"retry policy: max_attempts must be >= 1, got {self.max_attempts}")
        for name in (
            "base_delay",
            "max_delay",
            "throttle_delay",
            "max_retry_after",
            "connect_timeout",
            "attempt_timeout",
            "stall_timeout",
            "deadline",
        ):
            value = getattr(self, name)
            if not value >= 0:  # also rejects NaN
                raise ConfigError(f"retry policy: {name} must be >= 0 seconds, got {value}")
        for name in ("connect_timeout", "attempt_timeout", "stall_timeout"):
            if getattr(self, name) == 0:
                raise ConfigError(f"retry policy: {name} must be > 0 seconds")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: float) -> RetryPolicy:
        """The defaults, overridden by ``SYNCENGINE_S3_<FIELD>`` variables, then by ``overrides``.

        >>> RetryPolicy.from_env({"SYNCENGINE_S3_MAX_ATTEMPTS": "3"}).max_attempts
        3
        """
        env = os.environ if environ is None else environ
        values: dict[str, float] = {}
        for name in cls.__struct_fields__:
            var = ENV_PREFIX + name.upper()
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            if name != "max_attempts":  # the times: a duration (README.md, "Units")
                values[name] = env_duration(var, 0.0, environ=env)
                continue
            try:
                values[name] = int(raw)
            except ValueError:
                raise ConfigError(f"{var}={raw!r} is not an integer") from None
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def delay(
        self,
        retry: int,
        *,
        throttled: bool,
        retry_after: float | None,
        rng: random.Random | None = None,
    ) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        base = self.throttle_delay if throttled else self.base_delay
        ceiling = min(self.max_delay, base * 2.0 ** min(max(retry, 1) - 1, 62))
        wait = (rng or random).uniform(0.0, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return wait


class TransferCounters:
    """Running totals of a store's traffic (for tests and progress displays)."""

    __slots__ = ("bytes_received", "bytes_sent", "requests", "retries")

    def __init__(self) -> None:
        #: HTTP requests sent (every attempt counts).
        self.requests = 0
        #: Attempts that were retries of a failed one.
        self.retries = 0
        #: Request body bytes handed to the connection.
        self.bytes_sent = 0
        #: Response body bytes read.
        self.bytes_received = 0

    def snapshot(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self.snapshot().items())
        return f"TransferCounters({inner})"


class Transient(Exception):
    """One attempt failed in a way another attempt may fix.

    ``maybe_applied`` says whether the server may have carried the request out anyway (a
    reset after the body was sent: yes; a refused connection or a throttling answer: no).
    A conditional write retried after such an attempt can find its own earlier success.
    """

    def __init__(
        self,
        detail: str,
        *,
        retry_after: float | None = None,
        throttled: bool = False,
        maybe_applied: bool = True,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
        self.throttled = throttled
        self.maybe_applied = maybe_applied


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), else None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def transient_from_status(status: int, code: str, message: str, retry_after: str | None) -> Transient | None:
    """A `Transient` if an HTTP error answer is worth another attempt, else None."""
    if status not in RETRYABLE_STATUS and code not in RETRYABLE_CODES:
        return None
    throttled = status == 429 or code in THROTTLE_CODES
    label = f"{status} {code}".rstrip() + (f" ({message})" if message else "")
    return Transient(
        f"the server answered {label}",
        retry_after=parse_retry_after(retry_after),
        throttled=throttled,
        # A throttled or refused request was not carried out; a 500 may have been.
        maybe_applied=not (throttled or status == 503 or code == "ConditionalRequestConflict"),
    )


def transport_errors() -> tuple[type[Exception], ...]:
    """What a failed transport raises: OSError, TimeoutError and, once aiohttp is loaded,
    ``aiohttp.ClientError`` (it is looked up, not imported: while it is not loaded, none of
    its errors can be in flight)."""
    aiohttp: Any = sys.modules.get("aiohttp")
    if aiohttp is None:
        return (OSError, TimeoutError)
    return (aiohttp.ClientError, OSError, TimeoutError)


def transient_from_exception(exc: BaseException) -> Transient | None:
    """A `Transient` if a transport failure is worth another attempt, else None."""
    # aiohttp is looked up, not imported: when it is not loaded none of its errors exist.
    aiohttp: Any = sys.modules.get("aiohttp")
    if isinstance(exc, ssl.SSLCertVerificationError) or (
        aiohttp is not None and isinstance(exc, aiohttp.ClientSSLError)
    ):
        return None  # a certificate problem does not go away by itself
    if aiohttp is not None and isinstance(exc, aiohttp.ClientConnectorError):
        # Refused, unreachable, DNS: the request never left this machine.
        return Transient(f"could not connect ({_describe(exc)})", maybe_applied=False)
    if aiohttp is not None and isinstance(exc, aiohttp.ServerDisconnectedError):
        return Transient("the server closed the connection")
    if aiohttp is not None and isinstance(exc, aiohttp.ClientPayloadError):
        return Transient(f"the response body was cut short ({_describe(exc)})")
    if isinstance(exc, TimeoutError):  # also aiohttp.ServerTimeoutError
        return Transient(f"timed out ({_describe(exc)})")
    if isinstance(exc, ConnectionError) or (
        aiohttp is not None and isinstance(exc, aiohttp.ClientConnectionError)
    ):
        return Transient(f"the connection failed ({_describe(exc)})")
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError | PermissionError):
        return Transient(f"network error ({_describe(exc)})")
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class AttemptGuard:
    """Ends the current task's attempt when it runs too long or stops moving bytes.

    ``progress()`` is cheap (it stores a time); a timer checks it lazily, so a transfer
    calling it for every chunk costs no timer churn. On expiry the task is cancelled and
    the ``async with`` block raises `Transient` instead of ``CancelledError``; a
    cancellation from outside still propagates as usual.
    """

    def __init__(self, attempt_timeout: float, stall_timeout: float) -> None:
        self._attempt_timeout = attempt_timeout
        self._stall = stall_timeout
        self._fired: str | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._end = 0.0
        self.last = 0.0

    def progress(self) -> None:
        """Bytes moved: the stall clock starts over."""
        if self._loop is not None:
            self.last = self._loop.time()

    def _arm(self) -> None:
        assert self._loop is not None
        self._handle = self._loop.call_at(min(self.last + self._stall, self._end), self._check)

    def _check(self) -> None:
        assert self._loop is not None and self._task is not None
        now = self._loop.time()
        if now >= self._end:
            self._fired = f"the attempt took longer than {self._attempt_timeout:g} s"
        elif now - self.last >= self._stall:
            self._fired = f"no bytes moved for {self._stall:g} s (stalled)"
        else:
            self._arm()
            return
        self._task.cancel()

    async def __aenter__(self) -> AttemptGuard:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("AttemptGuard needs a running task")
        self._task = task
        self._cancelling = task.cancelling()
        self.last = self._loop.time()
        self._end = self.last + self._attempt_timeout
        self._arm()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._fired is None or self._task is None:
            return
        # We cancelled the task: take our cancellation back, and turn it into a retry
        # unless someone else cancelled the task too.
        if self._task.uncancel() <= self._cancelling and exc_type is not None:
            if issubclass(exc_type, asyncio.CancelledError):
                raise Transient(self._fired) from None
            if issubclass(exc_type, transport_errors()):
                raise Transient(self._fired) from exc


class Retrier:
    """The retry state of one logical request: counts attempts, waits, gives up.

    Usage (what every store request does)::

        retrier = Retrier(policy, "GET s3://b/k", counters=counters)
        while True:
            try:
                async with retrier.attempt() as guard:
                    return await send_once(guard)   # raises Transient to ask for a retry
            except Transient as t:
                await retrier.backoff(t)            # sleeps, or raises StoreUnavailable
    """

    def __init__(
        self,
        policy: RetryPolicy,
        what: str,
        *,
        counters: TransferCounters | None = None,
        rng: random.Random | None = None,
        hint: str = "",
    ) -> None:
        self.policy = policy
        self.what = what
        self.counters = counters
        self.attempts = 0
        #: An earlier attempt may have been carried out by the server (see `Transient`).
        self.maybe_applied = False
        self.last: Transient | None = None
        self._rng = rng
        self._hint = hint
        self._start = time.monotonic()

    def attempt(self) -> AttemptGuard:
        """Begin the next attempt: a guard enforcing the attempt and stall timeouts."""
        self.attempts += 1
        if self.attempts > 1 and self.counters is not None:
            self.counters.retries += 1
        return AttemptGuard(self.policy.attempt_timeout, self.policy.stall_timeout)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def give_up(self, last: Transient) -> StoreUnavailable:
        p = self.policy
        hint = f"; {self._hint}" if self._hint else ""
        return StoreUnavailable(
            f"{self.what} failed after {self.attempts} attempt(s) in {self.elapsed:.1f} s: "
            f"{last.detail} (retry policy: max_attempts={p.max_attempts}, deadline={p.deadline:g} s; "
            f"raise {ENV_PREFIX}MAX_ATTEMPTS or {ENV_PREFIX}DEADLINE to keep trying longer){hint}"
        )

    async def backoff(self, failure: Transient) -> None:
        """Wait before the next attempt, or raise `StoreUnavailable` when the policy is spent."""
        self.last = failure
        self.maybe_applied = self.maybe_applied or failure.maybe_applied
        p = self.policy
        if self.attempts >= p.max_attempts:
            raise self.give_up(failure)
        wait = p.delay(
            self.attempts, throttled=failure.throttled, retry_after=failure.retry_after, rng=self._rng
        )
        if self.elapsed + wait > p.deadline:
            raise self.give_up(failure)
        log.info(
            "%s: attempt %d failed (%s); retrying in %.2f s",
            self.what,
            self.attempts,
            failure.detail,
            wait,
        )
        await asyncio.sleep(wait)
