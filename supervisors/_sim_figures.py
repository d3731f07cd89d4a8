from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec

from actors import ActorError
from actors.chat._anomaly import AnomalyKind
from actors.chat._events import LIFECYCLE_EVENT_TYPES, StampedEvent
from actors.sim._report import Criterion, report_without_wall

from ._sim_collect import client_latency
from ._sim_intensity import event_times, intensity_criteria
from ._sim_run import ReadinessSample
from .app import MONITOR, MONITORING
from .faults import Fault, check_exactly_once, check_mailbox

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from actors.sim._client import ClientReport
    from actors.sim._report import SimulationReport

    from ._sim_collect import Observations
    from ._sim_presets import SimulationSettings
    from ._sim_run import SimulationRun
    from ._watchdog import LoopLagWatchdog
    from .app import Runtime


class RunFacts:
    """What one simulation is compared on with another: its report, every client's receipts, and the alerts
    ``(kind, thread, run, tool call, detectedAt)`` in the order they were raised."""

    def __init__(self, *, report: SimulationReport, clients: list[ClientReport], alerts: list[tuple[Any, ...]]) -> None:
        self.report = report
        self.clients = clients
        self.alerts = alerts


class ShutdownFacts(msgspec.Struct, frozen=True, kw_only=True):
    """Figure 9: when the runtime's shutdown began and ended (runtime-clock ms), the actors it left in the system it
    ran in, and the event loop's task count before the runtime started and after everything stopped."""

    began_at: int
    stopped_at: int
    leftovers: list[str]
    tasks_before: int
    tasks_after: int


# ---------------------------------------------------------------------------------------------------- instruments


class LifecycleSeen(Fault):
    """A pass-through interceptor (figure 4): records each lifecycle event the monitor's handler actually gets."""

    name = "lifecycle_seen"

    def __init__(self, run: SimulationRun) -> None:
        super().__init__()
        self._seen = run.lifecycle_seen

    async def around(self, receive: Callable[[Any], Awaitable[Any]], message: Any) -> Any:
        if type(message) is StampedEvent and type(message.event) in LIFECYCLE_EVENT_TYPES:
            self._seen.add((message.thread_id, message.seq))
        return await receive(message)


async def sample_readiness(run: SimulationRun, runtime: Runtime, every: float) -> None:
    """Figure 2: sample the runtime's health every ``every`` seconds; keep the samples taken while monitoring is not
    running."""
    tick = run.start
    while True:
        tick += every
        await anyio.sleep_until(tick)
        try:
            health = await runtime.health()
        except (ActorError, TimeoutError):
            continue
        run.readiness_samples += 1
        if health.monitoring != "running":
            run.readiness.append(
                ReadinessSample(round(tick - run.start, 3), health.monitoring, health.ready, health.status)
            )


async def sample_monitor_mailbox(run: SimulationRun, runtime: Runtime) -> None:
    """Figure 4: every 10 ms, the monitor's queue depth against its cap, and its books (``check_mailbox``)."""
    while True:
        monitor = runtime.monitor_ref()
        if monitor is not None:
            stats = monitor.statistics()
            run.mailbox_samples += 1
            run.mailbox_deepest = max(run.mailbox_deepest, stats.queued)
            result = check_mailbox(stats)
            if not result.ok and len(run.mailbox_problems) < 10:
                run.mailbox_problems.extend(result.problems)
        await anyio.sleep(0.01)


# ---------------------------------------------------------------------------------------------------- criteria


def run_criteria(
    run: SimulationRun,
    seen: Observations,
    report: SimulationReport,
    *,
    shutdown: ShutdownFacts | None,
    watchdog: LoopLagWatchdog | None,
) -> list[Criterion]:
    """The criteria a preset's figure adds to the usual ones, from what the run recorded."""
    settings = run.settings
    checks = settings.checks
    criteria = _applied(settings, report)
    if run.interrupted:
        return criteria
    if checks.intensity_model:
        criteria += intensity_criteria(run, seen)
    if checks.watch_loop and watchdog is not None:
        criteria += _loop_blocks(run, seen, report, watchdog)
    if checks.monitor_mailbox:
        criteria += _mailbox(run, seen)
    if checks.crashes_mid_anomaly:
        criteria += _mid_anomaly(run, seen)
    if checks.max_audit_intervals is not None:
        criteria += _audits(run, checks.max_audit_intervals)
    if run.malformed:
        # Nothing restarts for bad input; a run that also crashes the monitor on purpose checks the rest only.
        restarting = any(fault.name.startswith("monitor_") for fault in run.plan.runtime_faults)
        criteria += _malformed(run, seen, report, restarting=restarting)
    if shutdown is not None:
        criteria += _shutdown(run, seen, shutdown)
    return criteria


def _applied(settings: SimulationSettings, report: SimulationReport) -> list[Criterion]:
    applied = {fault.name: 0 for fault in report.faults}
    for fault in report.faults:
        applied[fault.name] += fault.applied
    return [
        Criterion(
            name=f"faults.{name}.applied",
            passed=applied.get(name, 0) >= least,
            detail=f"{applied.get(name, 0):,} applied (at least {least:,} wanted)",
        )
        for name, least in sorted(settings.min_applied.items())
    ]


def baseline_criteria(settings: SimulationSettings, faulty: RunFacts, baseline: RunFacts) -> list[Criterion]:
    """The criteria that compare a run with the same seed's run without faults (figures 1 and 6)."""
    criteria = []
    limit = settings.max_added_p99_ms
    ours, theirs = faulty.report.latency.bridge_p99_ms, baseline.report.latency.bridge_p99_ms
    if limit is not None and settings.clock == "real":
        added = None if ours is None or theirs is None else ours - theirs
        criteria.append(
            Criterion(
                name="latency.added_p99",
                passed=added is not None and added <= limit,
                detail=f"bridge p99 {_ms(ours)} vs {_ms(theirs)} without faults (same seed): "
                f"{_ms(added)} added, at most {limit:g} ms allowed",
            )
        )
    ratio = settings.checks.max_others_p99_ratio
    if ratio is not None:
        faulted = _faulted_clients(settings)
        mine = client_latency([client for client in faulty.clients if client.client_id not in faulted])
        base = client_latency([client for client in baseline.clients if client.client_id not in faulted])
        p99, base_p99 = mine.quantile(0.99), base.quantile(0.99)
        within = p99 is not None and base_p99 is not None and p99 <= max(base_p99 * ratio, base_p99)
        criteria.append(
            Criterion(
                name="clients.others_p99",
                passed=within,
                detail=f"the {len(faulty.clients) - len(faulted)} clients without a fault: delivery p99 {_ms(p99)} "
                f"over {mine.count:,} frames vs {_ms(base_p99)} over {base.count:,} without faults (same seed); "
                f"at most {ratio:g}x allowed",
            )
        )
        slow = [client for client in faulty.clients if client.client_id in faulted]
        closed = [client for client in slow if client.closes.get("4001", 0) >= 1]
        criteria.append(
            Criterion(
                name="clients.slow_closed_4001",
                passed=bool(slow) and len(closed) == len(slow),
                detail=f"{len(closed)} of {len(slow)} slow readers closed with 4001 (slow consumer): "
                + ", ".join(f"{client.client_id} {client.closes}, {client.resumes} resumes" for client in slow[:3]),
            )
        )
    return criteria


def _faulted_clients(settings: SimulationSettings) -> set[str]:
    from actors.sim._plan import plan_simulation

    plan = plan_simulation(settings.spec)
    return {client.client_id for client in plan.clients if client.slow or client.outages or client.send_failures}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g} ms"


# ---------------------------------------------------------------------------------------------------- figure 3


def _loop_blocks(
    run: SimulationRun, seen: Observations, report: SimulationReport, watchdog: LoopLagWatchdog
) -> list[Criterion]:
    blocks = sum(1 for detail in run.outcomes.get("monitor_block", []) if not detail.startswith("skipped"))
    # A loaded machine may add lags no actor held: those are reported unattributed and are not counted.
    named = [block for block in watchdog.history() if block.actor is not None]
    right = [block for block in named if block.actor == MONITOR and block.supervisor == MONITORING]
    handled = event_times(seen.timeline, "blocked_loop", MONITORING, "monitor")
    stalls = sorted(block.seconds for block in right)
    stall = f"{stalls[0]:.3f}-{stalls[-1]:.3f} s each" if stalls else "none"
    return [
        Criterion(
            name="watchdog.named_monitor",
            passed=len(right) >= blocks > 0 and len(right) == len(named),
            detail=f"{len(right)} loop blocks named {MONITOR} (supervisor {MONITORING}) for {blocks} injected, "
            f"{len(named) - len(right)} named otherwise, {watchdog.blocks - len(named)} unattributed; stall "
            f"measured {stall}",
        ),
        Criterion(
            name="monitor.block_policy_applied",
            passed=len(handled) >= blocks > 0,
            detail=f"{len(handled)} blocked_loop failures of the monitor handled by {MONITORING} for {blocks} "
            f"blocks; {report.supervision.restarts} restarts in all. Every actor in the loop stalls with a block, "
            "the simulated agents too, so the events' own latency (bridge p99 "
            f"{_ms(report.latency.bridge_p99_ms)}, clients' p99.9 {_ms(report.latency.client_p999_ms)}) does not "
            "show it: the watchdog's measure does",
        ),
    ]


# ---------------------------------------------------------------------------------------------------- figure 4


def _mailbox(run: SimulationRun, seen: Observations) -> list[Criterion]:
    checks = run.settings.checks
    capacity = run.settings.runtime.monitor_mailbox
    final = run.monitor_final
    metrics = seen.metrics
    criteria = []
    high_water = final.mailbox.high_water if final is not None else None
    criteria.append(
        Criterion(
            name="monitor.mailbox_bounded",
            passed=run.mailbox_deepest <= capacity and high_water is not None and high_water <= capacity,
            detail=f"deepest queue {run.mailbox_deepest} over {run.mailbox_samples:,} samples (10 ms apart), high "
            f"water {high_water}, cap {capacity}",
        )
    )
    final_check = check_mailbox(final) if final is not None else None
    problems = [*run.mailbox_problems, *(final_check.problems if final_check is not None else ("no final stats",))]
    criteria.append(
        Criterion(
            name="monitor.mailbox_accounted",
            passed=not problems,
            detail=(
                f"sent {final.sent:,} == processed {final.processed:,} + dropped {final.dropped_total:,} + "
                f"dead-lettered {final.dead_lettered:,} + queued {final.queued:,}, at every sample"
                if final is not None and not problems
                else "; ".join(problems[:3])
            ),
        )
    )
    shed = metrics.taps_shed
    lost = metrics.dropped.get("monitor_tap", 0) - shed
    criteria.append(
        Criterion(
            name="monitor.taps_accounted",
            passed=metrics.events_accepted == metrics.taps + shed and lost >= 0,
            detail=f"accepted {metrics.events_accepted:,} == tapped {metrics.taps:,} + shed {shed:,} (content only); "
            f"dropped['monitor_tap'] {metrics.dropped.get('monitor_tap', 0):,} = shed {shed:,} + refused by the "
            f"mailbox {lost:,}",
        )
    )
    if checks.monitor_pace is not None and checks.min_overload is not None:
        duration = run.settings.spec.duration
        offered = metrics.events_accepted / duration
        capacity_per_s = 1.0 / checks.monitor_pace
        ratio = offered / capacity_per_s
        criteria.append(
            Criterion(
                name="monitor.overloaded",
                passed=ratio >= checks.min_overload and shed > 0,
                detail=f"{offered:,.0f} taps/s offered to a monitor handling {capacity_per_s:,.0f}/s: {ratio:.2f}x "
                f"(at least {checks.min_overload:g}x wanted); {shed:,} content taps shed",
            )
        )
    lifecycle = sum(agent.lifecycle for agent in seen.agents)
    false_alarms = sum(
        1
        for alert in run.alerts
        if alert.kind in (AnomalyKind.MISSING_AGENT_STARTED, AnomalyKind.ORPHAN_TOOL_COMPLETED)
    )
    criteria.append(
        Criterion(
            name="monitor.lifecycle_kept",
            passed=len(run.lifecycle_seen) == lifecycle and false_alarms == 0,
            detail=f"{len(run.lifecycle_seen):,} of {lifecycle:,} lifecycle events reached the monitor's handler; "
            f"{false_alarms} missing-start or orphan alerts",
        )
    )
    return criteria


# ---------------------------------------------------------------------------------------------------- figure 5


def _mid_anomaly(run: SimulationRun, seen: Observations) -> list[Criterion]:
    thresholds = run.settings.runtime.monitor.thresholds
    truth = sorted(
        [entry for agent in seen.agents for entry in agent.truth] + run.truth, key=lambda entry: entry.due_at
    )
    kinds = {entry.kind for entry in truth}
    alerts = sorted((alert for alert in run.alerts if alert.kind.value in kinds), key=lambda alert: alert.detected_at)
    # Keys are unique per anomaly but one (every error burst is ("error_burst", "*")): the n-th report of a key
    # answers its n-th injection.
    expected = _numbered([(t.kind, t.thread_id, t.run_id, t.tool_call_id) for t in truth])
    reported = _numbered([_key(alert) for alert in alerts])
    once = check_exactly_once([key for key, _ in reported], [key for key, _ in expected], check="alerts")
    detected = {key: alert.detected_at for (key, _), alert in zip(reported, alerts, strict=True)}
    lead = {"stuck_tool": thresholds.stuck_tool_after, "stale_thread": thresholds.stale_thread_after}
    crashes = sorted(run.crash_times)
    covered = 0
    for (key, _), entry in zip(expected, truth, strict=True):
        at = detected.get(key)
        if at is None:
            continue
        low = entry.due_at - round(lead.get(entry.kind, 0.0) * 1000)
        high = at + 1000
        if any(low <= crash <= high for crash in crashes):
            covered += 1
    return [
        Criterion(
            name="detect.exactly_once",
            passed=once.ok,
            detail=f"{len(expected)} injected anomalies, {len(reported)} reports of their kinds"
            + ("" if once.ok else f"; {len(once.problems)} problems, first: {once.problems[0]}"),
        ),
        Criterion(
            name="faults.crashes_mid_anomaly",
            passed=covered == len(truth) and len(truth) > 0,
            detail=f"{covered} of {len(truth)} anomalies had a monitor crash between their cause (a deadline's "
            f"start) and 1 s after their report; {len(crashes):,} crashes in all",
        ),
    ]


def _numbered(keys: Sequence[tuple[Any, ...]]) -> list[tuple[tuple[Any, ...], Any]]:
    """Each key with how many times it came before: ``(key, n)``, then the pair as the key itself."""
    seen: dict[tuple[Any, ...], int] = {}
    numbered = []
    for key in keys:
        n = seen.get(key, 0)
        seen[key] = n + 1
        numbered.append(((*key, n), n))
    return numbered


def _key(alert: Any) -> tuple[str, str, str | None, str | None]:
    return (alert.kind.value, alert.thread_id, alert.run_id, alert.tool_call_id)


# ---------------------------------------------------------------------------------------------------- figure 7


def _audits(run: SimulationRun, intervals: float) -> list[Criterion]:
    window = round(intervals * run.settings.runtime.monitor.audit_interval * 1000)
    flags = sorted(alert.detected_at for alert in run.alerts if alert.kind is AnomalyKind.HEALTH_CLAIM_MISMATCH)
    delays = []
    for onset in run.lie_onsets:
        hit = next((at for at in flags if onset < at <= onset + window), None)
        if hit is not None:
            delays.append(hit - onset)
    delay = f"; delay after onset {min(delays) / 1000:g}-{max(delays) / 1000:g} s" if delays else ""
    return [
        Criterion(
            name="audit.flagged_within",
            passed=len(delays) == len(run.lie_onsets) > 0,
            detail=f"{len(delays)} of {len(run.lie_onsets)} lies flagged health_claim_mismatch within {intervals:g} "
            f"audit intervals ({window / 1000:g} s) of their onset{delay}",
        )
    ]


# ---------------------------------------------------------------------------------------------------- figure 8


def _malformed(
    run: SimulationRun, seen: Observations, report: SimulationReport, *, restarting: bool
) -> list[Criterion]:
    counts = run.malformed
    fed = counts.get("fed", 0)
    published = counts.get("published", 0)
    invalid = seen.metrics.dropped.get("invalid_event", 0)
    failures = sum(counts_by_kind.get("failed", 0) for counts_by_kind in report.supervision.by_child.values())
    criteria = [
        Criterion(
            name="malformed.rejected_clearly",
            passed=counts.get("rejected_clearly", 0) == fed > 0,
            detail=f"{counts.get('rejected_clearly', 0):,} of {fed:,} fuzzed frames rejected by event validation "
            "with an error naming the field or the rule" + (f"; first not: {run.unclear[0]}" if run.unclear else ""),
        ),
        Criterion(
            name="malformed.replay_rejected",
            passed=counts.get("replay_rejected", 0) == fed,
            detail=f"{counts.get('replay_rejected', 0):,} of {fed:,} rejected as trace lines",
        ),
        Criterion(
            name="malformed.publishes_counted",
            passed=invalid == published,
            detail=f"{published:,} malformed publishes to the bridge, {invalid:,} counted as invalid_event",
        ),
    ]
    if not restarting:
        criteria.append(
            Criterion(
                name="supervision.nothing_restarted",
                passed=report.supervision.restarts == 0 and failures == 0,
                detail=f"{failures} actor failures, {report.supervision.restarts} restarts",
            )
        )
    return criteria


# ---------------------------------------------------------------------------------------------------- figure 9


_TERMINAL: Final = frozenset({"RUN_FINISHED", "RUN_ERROR"})


def _shutdown(run: SimulationRun, seen: Observations, shutdown: ShutdownFacts) -> list[Criterion]:
    within = run.settings.checks.shutdown_within
    assert within is not None
    deadline = shutdown.began_at + round(within * 1000)
    not_terminal = [
        f"{client.client_id} {receipts.thread_id}: {receipts.last_type or 'nothing'}"
        for client in seen.clients
        for receipts in client.threads
        if receipts.last_type not in _TERMINAL
    ]
    late = []
    for client in seen.clients:
        close = client.last_close
        if close is None or close[0] != 1001 or close[1] > deadline:
            late.append(f"{client.client_id}: {close}")
        elif client.last_frame_at is not None and client.last_frame_at > close[1]:
            late.append(f"{client.client_id}: a frame after its close")
    last = max((client.last_close[1] for client in seen.clients if client.last_close is not None), default=None)
    after = "-" if last is None else f"{(last - shutdown.began_at) / 1000:g} s"
    return [
        Criterion(
            name="shutdown.terminal_events_last",
            passed=not not_terminal and len(seen.clients) > 0,
            detail=f"{sum(len(c.threads) for c in seen.clients) - len(not_terminal)} of "
            f"{sum(len(c.threads) for c in seen.clients)} (client, thread) streams end with RUN_FINISHED or RUN_ERROR"
            + (f"; not: {', '.join(not_terminal[:3])}" if not_terminal else ""),
        ),
        Criterion(
            name="shutdown.closed_1001_within",
            passed=not late,
            detail=f"{len(seen.clients) - len(late)} of {len(seen.clients)} clients closed 1001 after their last "
            f"frame, within {within:g} s; the last {after} after the shutdown began (the runtime stopped after "
            f"{(shutdown.stopped_at - shutdown.began_at) / 1000:g} s)"
            + (f"; not: {', '.join(late[:3])}" if late else ""),
        ),
        Criterion(
            name="shutdown.nothing_left",
            passed=not shutdown.leftovers and shutdown.tasks_after == shutdown.tasks_before,
            detail=f"{len(shutdown.leftovers)} actors left behind"
            + (f" ({', '.join(shutdown.leftovers[:3])})" if shutdown.leftovers else "")
            + f"; tasks {shutdown.tasks_before} before the runtime, {shutdown.tasks_after} after",
        ),
    ]


# ---------------------------------------------------------------------------------------------------- figure 10


def determinism_criteria(first: RunFacts, second: RunFacts, names: tuple[str, str]) -> list[Criterion]:
    """Figure 10: two runs of the same settings (on two event loops) gave the same deliveries, alerts and report."""
    a, b = names
    digests = {client.client_id: client.digest for client in first.clients}
    same = [client for client in second.clients if digests.get(client.client_id) == client.digest]
    frames = sum(client.frames for client in first.clients)
    pairs = enumerate(zip(first.alerts, second.alerts, strict=False))
    different_alerts = next((f"; first difference at alert {i}: {x} vs {y}" for i, (x, y) in pairs if x != y), "")
    reports_equal = report_without_wall(first.report) == report_without_wall(second.report)
    return [
        Criterion(
            name="determinism.deliveries",
            passed=len(same) == len(first.clients) == len(second.clients) > 0,
            detail=f"{len(same)} of {len(first.clients)} clients received the same frames, bytes and times, and the "
            f"same closes, on {a} and {b} ({frames:,} frames each on {a})",
        ),
        Criterion(
            name="determinism.alerts",
            passed=first.alerts == second.alerts,
            detail=f"{len(first.alerts)} alerts on {a}, {len(second.alerts)} on {b}: "
            f"{'identical' if first.alerts == second.alerts else 'different'} (kind, thread, run, tool call, "
            f"detectedAt){different_alerts}",
        ),
        Criterion(
            name="determinism.report",
            passed=reports_equal,
            detail=f"the reports on {a} and {b} are {'identical' if reports_equal else 'different'} except their "
            f"wall part ({first.report.wall.seconds:g} s and {second.report.wall.seconds:g} s of wall time)",
        ),
    ]
