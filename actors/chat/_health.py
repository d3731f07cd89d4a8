from __future__ import annotations

import enum
import inspect
import logging
import math
from bisect import bisect_left
from collections import deque
from typing import Any, Final, Protocol, runtime_checkable

import msgspec

from actors._actor import Actor
from actors.chat._components import ComponentHealthChanged

logger = logging.getLogger("agentwatch.chat.health")


class HealthStatus(enum.StrEnum):
    """A component's health, worst last; the value is the seed's word."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"

    @property
    def rank(self) -> int:
        """0 for healthy, 1 for degraded, 2 for unhealthy (to take the worst of several)."""
        return _RANK[self]


_RANK: Final = {HealthStatus.HEALTHY: 0, HealthStatus.DEGRADED: 1, HealthStatus.UNHEALTHY: 2}


class HealthReason(msgspec.Struct, frozen=True, kw_only=True):
    """One check that is not healthy: which check, how bad, and the measured figure in words.

    :param check: a stable name (``delivery_errors``, ``queue_depth``, ``lagging_connections``, ``connections``,
        ``tap_drops``, ``monitor``, ``delivery_stalled``, ``inbox_drops``); observers compare on it.
    :param status: degraded or unhealthy.
    :param detail: the figure and the threshold it crossed, for a human.
    """

    check: str
    status: HealthStatus
    detail: str


class ComponentHealth(msgspec.Struct, frozen=True, kw_only=True):
    """What ``get_health_status()`` returns: the overall status and the reasons it is not healthy.

    :param status: the worst status among ``reasons`` (healthy when there are none).
    :param reasons: one entry per failing check.
    :param checked_at: ms on the runtime clock when it was evaluated.
    """

    status: HealthStatus
    reasons: tuple[HealthReason, ...] = ()
    checked_at: int = 0

    def same_state(self, other: ComponentHealth | None) -> bool:
        """Whether ``other`` has the same status and the same failing checks at the same levels.

        A change of a figure alone (an error rate going from 12% to 13%) is not a health change.
        """
        if other is None or other.status is not self.status:
            return False
        return {(r.check, r.status) for r in self.reasons} == {(r.check, r.status) for r in other.reasons}


@runtime_checkable
class HealthObserver(Protocol):
    """The seed's observer interface: an object told about health changes (``ComponentMonitor`` implements it)."""

    def on_component_health_change(self, component_id: str, health: ComponentHealth) -> Any:
        """Called with the new health; may return an awaitable, which is awaited (in the proxy actor)."""


class HealthObserverProxy(Actor[ComponentHealthChanged]):
    """Runs a plain observer object's ``on_component_health_change`` in an actor of its own.

    The component only ever tells this actor's ref, so an observer that raises, hangs or is slow never touches the
    component's own handler. A raising observer is logged and the proxy carries on.

    :param observer: the object to call; its method may be sync or async.
    """

    def __init__(self, observer: HealthObserver) -> None:
        self._observer = observer

    async def receive(self, message: ComponentHealthChanged) -> None:
        try:
            # The observer gets what ``get_health_status()`` returns, not the message's plain copy of it.
            health = msgspec.convert(message.health, ComponentHealth)
            result = self._observer.on_component_health_change(message.component_id, health)
            if inspect.isawaitable(result):
                await result
        except Exception:
            # The observer is someone else's code: its failure is reported, never fatal to anyone.
            logger.exception("health observer %r raised on a change of %s", self._observer, message.component_id)


# Bucket upper bounds in ms. Latencies are whole ms (the resolution of ``StampedEvent.observed_at``), so the small
# buckets are exact values and the large ones widen roughly geometrically.
_BUCKET_BOUNDS: Final[tuple[float, ...]] = (
    0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750,
    1_000, 2_000, 5_000, 10_000, 30_000, 60_000, math.inf,
)  # fmt: skip
_EXACT_BELOW: Final = 7  # values 0..6 index their bucket directly


class LatencyHistogram:
    """A fixed-bucket histogram of whole-millisecond latencies: O(1) record, mergeable, quantiles by bucket.

    A quantile is the upper bound of the bucket it falls in (exact below 7 ms), capped by the largest value
    recorded; negative values (clock skew) count as 0.
    """

    __slots__ = ("count", "counts", "max_value")

    BOUNDS: Final = _BUCKET_BOUNDS

    def __init__(self) -> None:
        self.counts = [0] * len(_BUCKET_BOUNDS)
        self.count = 0
        self.max_value = 0

    def record(self, value_ms: int) -> None:
        """Count one latency."""
        if value_ms < _EXACT_BELOW:
            self.counts[value_ms if value_ms > 0 else 0] += 1
        else:
            self.counts[bisect_left(_BUCKET_BOUNDS, value_ms)] += 1
        if value_ms > self.max_value:
            self.max_value = value_ms
        self.count += 1

    def record_zeros(self, count: int) -> None:
        """Count ``count`` latencies of 0 ms (frames sent within the millisecond their event was accepted)."""
        if count:
            self.counts[0] += count
            self.count += count

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s counts to this histogram."""
        counts = self.counts
        for index, n in enumerate(other.counts):
            if n:
                counts[index] += n
        self.count += other.count
        self.max_value = max(self.max_value, other.max_value)

    def quantile(self, q: float) -> float | None:
        """The latency (ms) at or below which a fraction ``q`` of the samples fall; None without samples.

        :raises ValueError: when ``q`` is not within [0, 1]
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be within [0, 1], got {q}")
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                # No sample exceeds the largest recorded one, so a wide bucket is capped by it.
                return float(min(_BUCKET_BOUNDS[index], self.max_value))
        return float(self.max_value)  # pragma: no cover  (the counts add up to count)


def require_number(owner: str, name: str, value: object, *, positive: bool = True) -> float:
    """Check a config field holding seconds (or another positive number) and return it as a float.

    :raises TypeError: when it is not a number
    :raises ValueError: when it is NaN, or not > 0 (``positive``) / not >= 0
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{owner}.{name} must be a number of seconds, got {type(value).__name__}")
    if math.isnan(value) or (value <= 0 if positive else value < 0):
        raise ValueError(f"{owner}.{name} must be {'> 0' if positive else '>= 0'}, got {value}")
    return float(value)


def require_int(owner: str, name: str, value: object, minimum: int) -> int:
    """Check a config field holding an int of at least ``minimum`` and return it.

    :raises TypeError: when it is not an int (a bool is not)
    :raises ValueError: when it is below ``minimum``
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}.{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{owner}.{name} must be >= {minimum}, got {value}")
    return value


def _require_fraction(owner: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{owner}.{name} must be a number, got {type(value).__name__}")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{owner}.{name} must be within (0, 1], got {value}")
    return float(value)


class HealthThresholds(msgspec.Struct, frozen=True, kw_only=True):
    """When the bridge reports itself degraded or unhealthy (each figure is taken over ``BridgeConfig.health_window``).

    :param error_rate_degraded: failed sends / attempted sends at or above which the bridge is degraded
    :param error_rate_unhealthy: the same ratio at or above which it is unhealthy
    :param queue_fill_degraded: the fullest connection queue, as a fraction of its capacity, that makes it degraded
    :param lagging_unhealthy: the fraction of open connections held back (queue full, catching up from the replay
        ring) that makes it unhealthy; any lagging connection makes it degraded
    :param max_connections: open connections above which it is degraded; ``None`` sets no limit
    """

    error_rate_degraded: float = 0.01
    error_rate_unhealthy: float = 0.10
    queue_fill_degraded: float = 0.8
    lagging_unhealthy: float = 0.5
    max_connections: int | None = None

    def __post_init__(self) -> None:
        owner = "HealthThresholds"
        degraded = _require_fraction(owner, "error_rate_degraded", self.error_rate_degraded)
        unhealthy = _require_fraction(owner, "error_rate_unhealthy", self.error_rate_unhealthy)
        if unhealthy < degraded:
            raise ValueError(
                f"{owner}.error_rate_unhealthy must be >= error_rate_degraded ({degraded}), got {unhealthy}"
            )
        _require_fraction(owner, "queue_fill_degraded", self.queue_fill_degraded)
        _require_fraction(owner, "lagging_unhealthy", self.lagging_unhealthy)
        if self.max_connections is not None:
            require_int(owner, "max_connections", self.max_connections, 1)


class HealthSample(msgspec.Struct, frozen=True, kw_only=True):
    """What the bridge measured at one moment: cumulative counters (compared across the window) and gauges.

    :param at: loop time, in seconds
    :param attempts: sends attempted so far (delivered + failed)
    :param errors: sends failed so far
    :param delivered: frames delivered so far
    :param tap_lost: monitor taps lost so far (dropped, dead-lettered, or skipped while it was detached)
    :param inbox_dropped: publishes the bridge's own mailbox refused so far
    :param queued: events queued for all open connections now
    :param fullest: the deepest connection queue now
    :param capacity: a connection queue's capacity
    :param connections: open connections now
    :param lagging: connections lagging now (queue full, catching up from the replay ring)
    :param monitor_problem: why the configured monitor is not being tapped now, or None
    """

    at: float
    attempts: int = 0
    errors: int = 0
    delivered: int = 0
    tap_lost: int = 0
    inbox_dropped: int = 0
    queued: int = 0
    fullest: int = 0
    capacity: int = 1
    connections: int = 0
    lagging: int = 0
    monitor_problem: str | None = None


class HealthWindow:
    """Judges the bridge's health from samples over a sliding window: pure logic, no clock and no event loop.

    Rates (failed sends, lost taps, refused publishes, delivery) are taken between the newest sample and the
    oldest one kept, which is the last at or before the window's start once the window has passed; gauges (queue
    depth, lagging connections, open connections, the monitor) are read from the newest sample.

    :param thresholds: the health thresholds
    :param window: seconds of history to judge over
    """

    __slots__ = ("_samples", "_thresholds", "_window")

    def __init__(self, thresholds: HealthThresholds, window: float) -> None:
        self._thresholds = thresholds
        self._window = require_number("HealthWindow", "window", window)
        self._samples: deque[HealthSample] = deque()

    def record(self, sample: HealthSample) -> None:
        """Add a sample (taken on the bridge's tick) and forget those the window no longer needs."""
        samples = self._samples
        samples.append(sample)
        horizon = sample.at - self._window
        while len(samples) >= 2 and samples[1].at <= horizon:
            samples.popleft()

    def judge(self, sample: HealthSample, checked_at: int) -> ComponentHealth:
        """The health ``sample`` shows against the oldest recorded sample (each check in ``docs/bridge.md``).

        :param sample: the latest measurement (recorded or not)
        :param checked_at: ms on the runtime clock, stamped on the result
        """
        thresholds = self._thresholds
        window = self._window
        oldest = self._samples[0] if self._samples else sample
        reasons: list[HealthReason] = []

        def fail(check: str, status: HealthStatus, detail: str) -> None:
            reasons.append(HealthReason(check=check, status=status, detail=detail))

        errors = sample.errors - oldest.errors
        if errors > 0:
            attempts = sample.attempts - oldest.attempts
            rate = errors / max(attempts, errors)
            if rate >= thresholds.error_rate_degraded:
                unhealthy = rate >= thresholds.error_rate_unhealthy
                fail(
                    "delivery_errors",
                    HealthStatus.UNHEALTHY if unhealthy else HealthStatus.DEGRADED,
                    f"{errors} of {attempts} sends failed ({rate:.1%})",
                )
        fill = sample.fullest / sample.capacity
        if fill >= thresholds.queue_fill_degraded:
            fail("queue_depth", HealthStatus.DEGRADED, f"fullest connection queue at {fill:.0%} of {sample.capacity}")
        if sample.lagging:
            share = sample.lagging / max(1, sample.connections)
            fail(
                "lagging_connections",
                HealthStatus.UNHEALTHY if share >= thresholds.lagging_unhealthy else HealthStatus.DEGRADED,
                f"{sample.lagging} of {sample.connections} connections lag behind (queue full)",
            )
        limit = thresholds.max_connections
        if limit is not None and sample.connections > limit:
            fail("connections", HealthStatus.DEGRADED, f"{sample.connections} open connections (limit {limit})")
        if sample.monitor_problem is not None:
            fail("monitor", HealthStatus.DEGRADED, sample.monitor_problem)
        tap_lost = sample.tap_lost - oldest.tap_lost
        if tap_lost > 0:
            fail("tap_drops", HealthStatus.DEGRADED, f"{tap_lost} monitor taps lost in the last {window:g} s")
        inbox = sample.inbox_dropped - oldest.inbox_dropped
        if inbox > 0:
            fail("inbox_drops", HealthStatus.UNHEALTHY, f"{inbox} publishes refused by the bridge's full mailbox")
        if sample.at - oldest.at >= window and sample.queued > 0 and sample.delivered == oldest.delivered:
            fail(
                "delivery_stalled",
                HealthStatus.UNHEALTHY,
                f"no frame delivered in {window:g} s while {sample.queued} events are queued",
            )
        status = max((reason.status for reason in reasons), key=lambda s: s.rank, default=HealthStatus.HEALTHY)
        return ComponentHealth(status=status, reasons=tuple(reasons), checked_at=checked_at)
