from __future__ import annotations

import math
from collections import Counter
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

import msgspec

from actors.chat._health import LatencyHistogram

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Hashable, Iterable, Mapping

    from actors import ActorStatistics
    from actors.chat._anomaly import Anomaly, AnomalyKey
    from actors.chat._bridge_handle import BridgeHandle
    from actors.chat._bridge_messages import BridgeMetrics

    from ._clients import DeliveryLog
    from ._history import FaultHistory

#: How many problems a result spells out (the count is always exact).
_SHOWN: Final = 20


class CheckFailed(AssertionError):
    """A checker found problems; the message lists them (an AssertionError, so pytest shows it as a failure)."""


class CheckResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one checker found.

    :param check: the checker's name
    :param checked: how many items it examined (frames, alerts, records, ...)
    :param problems: one line per violation, empty when the property holds
    """

    check: str
    checked: int
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def raise_for_problems(self) -> CheckResult:
        """Return self when ok.

        :raises CheckFailed: listing the problems (the first 20, and how many there are)
        """
        if self.problems:
            shown = "\n  ".join(self.problems[:_SHOWN])
            more = f"\n  ... and {len(self.problems) - _SHOWN} more" if len(self.problems) > _SHOWN else ""
            raise CheckFailed(
                f"{self.check}: {len(self.problems)} problem(s) in {self.checked} checked:\n  {shown}{more}"
            )
        return self


def check_delivery(logs: Iterable[DeliveryLog], *, last_seqs: Mapping[str, int] | None = None) -> CheckResult:
    """Per client and thread: frames in seq order, no seq twice, no gap, and (with ``last_seqs``) nothing missing.

    A client is owed every seq after where its first subscription started (``DeliveryLog.starts``), across all its
    connections: a resume with afterSeq must fill exactly what a close or a drop cost it.

    :param last_seqs: per thread, the last seq the bridge accepted; a client subscribed to the thread must have
        received up to it
    """
    problems: list[str] = []
    checked = 0
    for log in logs:
        for thread_id in log.threads():
            previous = log.starts.get(thread_id, 0)
            seen: set[int] = set()
            for delivery in log.deliveries:
                if delivery.thread_id != thread_id:
                    continue
                checked += 1
                where = f"{log.client} {thread_id} seq {delivery.seq} ({delivery.type}, {delivery.connection_id})"
                if delivery.first_seq > delivery.seq:
                    problems.append(f"{where}: firstSeq {delivery.first_seq} after its seq")
                covered = range(delivery.first_seq, delivery.seq + 1)
                twice = [seq for seq in covered if seq in seen]
                if twice:
                    problems.append(f"{where}: received again (duplicate of seq {twice[0]})")
                elif delivery.first_seq <= previous:
                    problems.append(f"{where}: out of order after seq {previous}")
                elif delivery.first_seq != previous + 1:
                    problems.append(f"{where}: gap, seqs {previous + 1}..{delivery.first_seq - 1} never received")
                seen.update(covered)
                previous = max(previous, delivery.seq)
            if last_seqs is not None and thread_id in last_seqs and previous < last_seqs[thread_id]:
                problems.append(
                    f"{log.client} {thread_id}: stream ends at seq {previous}, the bridge accepted up to "
                    f"{last_seqs[thread_id]} ({last_seqs[thread_id] - previous} never received)"
                )
    return CheckResult(check="delivery", checked=checked, problems=tuple(problems))


def check_exactly_once(
    reported: Iterable[Hashable], expected: Iterable[Hashable], *, allow_unexpected: bool = False, check: str = "once"
) -> CheckResult:
    """Each expected item reported exactly once; nothing else reported (unless ``allow_unexpected``).

    For alerts, compare :func:`anomaly_keys` of what the sinks got with the keys of the anomalies injected.
    """
    counts = Counter(reported)
    wanted = list(expected)
    problems: list[str] = []
    for item in wanted:
        seen = counts.get(item, 0)
        if seen != 1:
            problems.append(f"{item!r}: reported {seen} times, expected once")
    if not allow_unexpected:
        wanted_set = set(wanted)
        problems.extend(
            f"{item!r}: reported {n} time(s), not expected" for item, n in counts.items() if item not in wanted_set
        )
    return CheckResult(check=check, checked=sum(counts.values()), problems=tuple(problems))


def anomaly_keys(anomalies: Iterable[Anomaly], *, kinds: Iterable[str] | None = None) -> list[AnomalyKey]:
    """The dedup keys of ``anomalies`` (optionally of some kinds only), in order, duplicates kept."""
    wanted = None if kinds is None else set(kinds)
    return [anomaly.key for anomaly in anomalies if wanted is None or anomaly.kind.value in wanted]


def check_history(history: FaultHistory, *, reverted: bool = True, triggered: bool = False) -> CheckResult:
    """The history is well formed: times never go backwards, no line of an injection before it or after its revert
    (but effects, which may trail), and (``reverted``) every injection reverted, (``triggered``) every one took effect.
    """
    problems: list[str] = []
    last = -math.inf
    injected: dict[int, float] = {}
    reverted_at: dict[int, float] = {}
    fired: set[int] = set()
    for index, record in enumerate(history.records):
        if record.at < last:
            problems.append(f"line {index}: time {record.at} before the previous line's {last}")
        last = max(last, record.at)
        if record.injection == 0:
            continue
        if record.action == "inject":
            injected[record.injection] = record.at
            continue
        if record.injection not in injected:
            problems.append(f"line {index}: {record.action} of injection {record.injection} before its inject")
        if record.injection in reverted_at and record.action == "trigger":
            problems.append(f"line {index}: {record.fault} triggered after injection {record.injection} was reverted")
        if record.action == "revert":
            reverted_at[record.injection] = record.at
        elif record.action == "trigger":
            fired.add(record.injection)
    if reverted:
        problems.extend(f"injection {i} was never reverted" for i in sorted(injected) if i not in reverted_at)
    if triggered:
        problems.extend(f"injection {i} never took effect" for i in sorted(injected) if i not in fired)
    return CheckResult(check="history", checked=len(history.records), problems=tuple(problems))


def check_mailbox(stats: ActorStatistics) -> CheckResult:
    """An actor's mailbox kept its bound and lost nothing uncounted.

    ``sent == processed + dropped + dead_lettered + queued``, and the deepest it got is within its capacity.
    """
    problems: list[str] = []
    accounted = stats.processed + stats.dropped_total + stats.dead_lettered + stats.queued
    if stats.sent != accounted:
        problems.append(
            f"{stats.name}: sent {stats.sent} != processed {stats.processed} + dropped {stats.dropped_total} + "
            f"dead-lettered {stats.dead_lettered} + queued {stats.queued} (= {accounted})"
        )
    if stats.mailbox.high_water > stats.mailbox.capacity:
        problems.append(
            f"{stats.name}: depth reached {stats.mailbox.high_water}, over its cap {stats.mailbox.capacity}"
        )
    return CheckResult(check="mailbox", checked=stats.sent, problems=tuple(problems))


def check_bridge_accounting(metrics: BridgeMetrics) -> CheckResult:
    """The bridge's conservation identities (docs/bridge.md, "Conservation") hold in this snapshot."""
    m = metrics
    identities = (
        ("events_received", m.events_received, m.events_accepted + m.dropped.get("invalid_event", 0)),
        ("events_accepted", m.events_accepted, m.events_routed + m.events_unrouted),
        ("fan_out_total", m.fan_out_total, m.fan_out_sent + m.events_deferred),
        (
            "events_deferred",
            m.events_deferred,
            m.events_caught_up + m.dropped.get("deferred_on_close", 0) + m.deferred_pending,
        ),
    )
    problems = tuple(f"{name} {left} != {right}" for name, left, right in identities if left != right)
    return CheckResult(check="bridge accounting", checked=m.events_received, problems=problems)


class LatencyComparison(msgspec.Struct, frozen=True, kw_only=True):
    """How much later each (thread, seq) reached the clients under faults than in a baseline run (seconds).

    :param compared: deliveries found in both runs
    :param missing: deliveries of the baseline the faulty run lacks
    """

    compared: int
    missing: int
    p50: float
    p99: float
    max: float

    @property
    def p99_ms(self) -> float:
        """The 99th percentile of the added latency, in ms."""
        return self.p99 * 1000.0


def added_latency(
    faulty: Iterable[DeliveryLog],
    baseline: Iterable[DeliveryLog],
    *,
    faulty_origin: float = 0.0,
    baseline_origin: float = 0.0,
) -> LatencyComparison:
    """Compare two runs of the same seeded workload, client by client (matched by name): the added latency of
    each (client, thread, seq) is its arrival under faults minus its arrival in the baseline, each counted from
    its run's origin (e.g. the loop time its workload started).

    On a virtual clock both runs keep the same time axis, so the figure is exact.
    """
    base_times = {log.client: log.times() for log in baseline}
    added: list[float] = []
    missing = 0
    for log in faulty:
        base = base_times.get(log.client, {})
        times = log.times()
        for key, at in base.items():
            arrived = times.get(key)
            if arrived is None:
                missing += 1
            else:
                # Rounded to the ns: below that, the difference is float arithmetic on two time axes, not latency.
                added.append(round((arrived - faulty_origin) - (at - baseline_origin), 9) + 0.0)  # no -0.0
    added.sort()
    return LatencyComparison(
        compared=len(added),
        missing=missing,
        p50=_quantile(added, 0.5),
        p99=_quantile(added, 0.99),
        max=added[-1] if added else 0.0,
    )


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class BudgetReport(msgspec.Struct, kw_only=True):
    """What the critical path did within one :func:`critical_path_budget` block (filled in when it exits).

    :param p99_ms: delivery latency p99 of the frames sent within the block (bucket upper bound, whole ms), or
        None when none was sent
    :param lost: publishes the bridge's mailbox refused (never numbered: no client can ever get them)
    :param discarded: events thrown away at a connection close (a resuming client gets them back from the ring)
    :param restarts: restarts of the bridge actor
    """

    frames: int = 0
    delivered: int = 0
    p99_ms: float | None = None
    lost: int = 0
    discarded: int = 0
    restarts: int = 0
    slow_consumer_closes: int = 0
    send_errors: int = 0


@asynccontextmanager
async def critical_path_budget(
    bridge: BridgeHandle,
    *,
    p99_ms: float | None = None,
    lost: int | None = 0,
    restarts: int | None = 0,
    discarded: int | None = None,
    slow_consumer_closes: int | None = None,
    send_errors: int | None = None,
) -> AsyncIterator[BudgetReport]:
    """Fail unless the bridge stayed within budget while the block ran (a ``None`` budget is not checked).

    Reads the bridge's metrics before and after; latency is the p99 of the frames sent in between, from the
    difference of the two latency histograms. Put the fault injection inside the block::

        async with critical_path_budget(runtime.bridge, p99_ms=5, lost=0):
            async with inject(system, MONITOR, Crash(every=3)):
                ...  # drive load

    :raises CheckFailed: listing each figure over its budget, with the measured value
    """
    ref = bridge.ref
    before = await bridge.get_metrics()
    restarts_before = ref.statistics().restarts
    report = BudgetReport()
    yield report
    after = await bridge.get_metrics()
    report.frames = after.latency_samples - before.latency_samples
    report.delivered = after.events_delivered - before.events_delivered
    report.p99_ms = _window_p99(before, after)
    report.lost = _dropped(after, before, "inbox_full")
    report.discarded = _dropped(after, before, "discarded_on_close") + _dropped(after, before, "deferred_on_close")
    report.restarts = ref.statistics().restarts - restarts_before
    report.slow_consumer_closes = after.slow_consumer_closes - before.slow_consumer_closes
    report.send_errors = after.send_errors - before.send_errors
    problems: list[str] = []
    if p99_ms is not None and report.p99_ms is not None and report.p99_ms > p99_ms:
        problems.append(f"delivery latency p99 {report.p99_ms:g} ms > {p99_ms:g} ms over {report.frames} frames")
    budgets: tuple[tuple[str, int | None, int], ...] = (
        ("events lost (refused by the bridge's full mailbox)", lost, report.lost),
        ("bridge restarts", restarts, report.restarts),
        ("events discarded at connection close", discarded, report.discarded),
        ("slow-consumer closes", slow_consumer_closes, report.slow_consumer_closes),
        ("send errors", send_errors, report.send_errors),
    )
    problems.extend(f"{what}: {got} > {budget}" for what, budget, got in budgets if budget is not None and got > budget)
    if problems:
        raise CheckFailed("critical path over budget: " + "; ".join(problems))


def _dropped(after: BridgeMetrics, before: BridgeMetrics, reason: str) -> int:
    return after.dropped.get(reason, 0) - before.dropped.get(reason, 0)


def _window_p99(before: BridgeMetrics, after: BridgeMetrics) -> float | None:
    if not after.latency_counts:
        return after.latency_p99_ms  # a bridge without histogram counts: the whole-life figure is all there is
    previous = before.latency_counts or (0,) * len(after.latency_counts)
    window = LatencyHistogram()
    window.counts = [now - then for now, then in zip(after.latency_counts, previous, strict=True)]
    window.count = sum(window.counts)
    # The histogram's max is not windowed: cap the top bucket at its own upper bound (an upper bound of the p99).
    top = max((index for index, n in enumerate(window.counts) if n), default=0)
    bound = LatencyHistogram.BOUNDS[top]
    window.max_value = int(bound) if math.isfinite(bound) else _BEYOND_ANY_BUCKET
    return window.quantile(0.99)


_BEYOND_ANY_BUCKET: Final = 2**62
