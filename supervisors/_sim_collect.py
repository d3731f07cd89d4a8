from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

import anyio

from actors import ActorError
from actors.chat._anomaly import AnomalyKind
from actors.chat._health import LatencyHistogram
from actors.sim._agent import AgentReport, GetAgentReport
from actors.sim._client import ClientReport, GetClientReport
from actors.sim._faults import FAULT_CATALOG, FaultClass
from actors.sim._report import (
    ClientRow,
    ClientTotals,
    Criterion,
    DeliveryCounts,
    DetectionReport,
    EventCounts,
    FaultOutcome,
    LatencyReport,
    RunCounts,
    SimulationReport,
    SupervisionCounts,
    WallClock,
    failed_criteria,
)
from actors.sim._scoring import Detection, Explanation, score

from ._sim_run import GetTally

if TYPE_CHECKING:
    from collections.abc import Sequence

    from actors import ActorRef
    from actors.chat._bridge_messages import BridgeMetrics
    from actors.sim._plan import SimulationPlan
    from actors.sim._scripts import GroundTruth

    from ._sim_run import SimulationRun, TimelineEntry
    from .app import Runtime

#: How many missed / false-positive entries a report lists (the counts are always complete).
_LISTED: Final = 50


async def ask_all(refs: Sequence[ActorRef[Any]], message: Any) -> list[Any]:
    replies = []
    for ref in refs:
        try:
            replies.append(await ref.ask(message, timeout=10.0))
        except (ActorError, TimeoutError):
            continue
    return replies


class Observations:
    """What the simulation saw of the runtime and its simulated actors at the end of a run, to report on."""

    def __init__(
        self,
        *,
        agents: list[AgentReport],
        clients: list[ClientReport],
        metrics: BridgeMetrics,
        supervision: dict[str, Any],
        reported: int,
        monitoring: str,
        simulated: float,
        now_ms: int,
    ) -> None:
        self.agents = agents
        self.clients = clients
        self.metrics = metrics
        self.supervision = supervision
        self.reported = reported
        self.monitoring = monitoring
        self.simulated = simulated
        self.now_ms = now_ms

    @property
    def produced(self) -> dict[str, int]:
        """Events the agents published, per thread."""
        produced: dict[str, int] = {}
        for agent in self.agents:
            produced.update(agent.produced)
        return produced

    @property
    def timeline(self) -> list[TimelineEntry]:
        """The supervision events of the run, in order."""
        timeline: list[TimelineEntry] = self.supervision["timeline"]
        return timeline


async def observe(
    run: SimulationRun,
    runtime: Runtime,
    agents: Sequence[ActorRef[Any]],
    clients: Sequence[ActorRef[Any]],
    tally: ActorRef[Any],
) -> Observations:
    """Ask the agents, the clients, the bridge and the supervision tally for what they saw."""
    return Observations(
        agents=await ask_all(agents, GetAgentReport()),
        clients=await ask_all(clients, GetClientReport()),
        metrics=await runtime.bridge.get_metrics(),
        supervision=await tally.ask(GetTally()),
        reported=sum(runtime.memory.by_kind.values()),
        monitoring=runtime.monitoring_state(),
        simulated=round(anyio.current_time() - run.start, 3),
        now_ms=runtime.system.clock.now_ms(),
    )


def build_report(
    run: SimulationRun, seen: Observations, wall_start: float, loop_blocks: int | None, *, after_shutdown: bool = False
) -> SimulationReport:
    """Score the run and check its criteria.

    :param loop_blocks: blocks the loop-lag watchdog reported (None: it did not run)
    :param after_shutdown: the clients' reports were read after the runtime shut down (figure 9), the bridge's
        metrics just before it: every client has been closed, and what the bridge delivered while it shut down is
        not in its metrics (the clients' receipts are held against what the agents produced instead)
    """
    bridge_final = not after_shutdown
    settings = run.settings
    spec = settings.spec
    plan = run.plan
    now_ms = seen.now_ms
    simulated = seen.simulated
    agent_reports = seen.agents
    client_reports = seen.clients
    metrics = seen.metrics
    supervision = seen.supervision
    reported = seen.reported
    produced = seen.produced
    truth = [entry for agent in agent_reports for entry in agent.truth] + run.truth
    if run.interrupted:
        # A partial run is scored on what was already due (with room for the monitor's tick).
        horizon = now_ms - round(2000 * settings.runtime.monitor.check_interval)
        truth = [entry for entry in truth if entry.due_at <= horizon]
    explanations = run.explanations + _client_explanations(run)
    detections = [
        Detection(
            kind=anomaly.kind.value,
            thread_id=anomaly.thread_id,
            run_id=anomaly.run_id,
            tool_call_id=anomaly.tool_call_id,
            detected_at=anomaly.detected_at,
            detail=anomaly.detail,
        )
        for anomaly in run.alerts
    ]
    scoring = score(truth, detections, explanations)

    runs = RunCounts(
        started=sum(agent.runs for agent in agent_reports),
        finished=sum(agent.finished for agent in agent_reports),
        errored=sum(agent.errored for agent in agent_reports),
        unfinished=sum(agent.runs - agent.finished - agent.errored for agent in agent_reports),
        scenarios=_sum_dicts(agent.scenarios for agent in agent_reports),
    )
    total_produced = sum(produced.values())
    rejected: dict[str, int] = {
        reason: metrics.dropped[reason] for reason in ("inbox_full", "invalid_event") if reason in metrics.dropped
    }
    injected_invalid = run.malformed.get("published", 0)
    events = EventCounts(
        produced=total_produced,
        accepted=metrics.events_accepted,
        rejected=rejected,
        routed=metrics.events_routed,
        unrouted=metrics.events_unrouted,
        conserved=total_produced + injected_invalid == metrics.events_accepted + sum(rejected.values()),
        injected_invalid=injected_invalid,
    )
    dropped: dict[str, int] = {
        reason: metrics.dropped[reason]
        for reason in ("discarded_on_close", "deferred_on_close")
        if reason in metrics.dropped
    }
    owed = metrics.fan_out_total + metrics.events_replayed
    in_flight = metrics.queued + metrics.deferred_pending
    deliveries = DeliveryCounts(
        owed=owed,
        delivered=metrics.events_delivered,
        coalesced=metrics.events_coalesced,
        dropped=dropped,
        in_flight=in_flight,
        conserved=owed == metrics.events_delivered + metrics.events_coalesced + sum(dropped.values()) + in_flight,
        monitor_taps=metrics.taps,
        monitor_taps_lost=metrics.dropped.get("monitor_tap", 0),
    )
    client_totals, client_latency = _client_totals(client_reports, produced, require_connected=bridge_final)
    by_child: dict[str, dict[str, int]] = supervision["by_child"]
    bridge_events = by_child.get("agentwatch/bridge", {})
    supervision_counts = SupervisionCounts(
        restarts=_count_kind(by_child, "restarted"),
        detaches=_count_kind(by_child, "detached"),
        reattaches=_count_kind(by_child, "reattached"),
        escalations=_count_kind(by_child, "escalated"),
        blocked_loop=_count_kind(by_child, "blocked_loop"),
        handler_timeouts=supervision["handler_timeouts"],
        bridge_restarts=bridge_events.get("restarted", 0) + bridge_events.get("failed", 0),
        by_child=by_child,
    )
    latency = LatencyReport(
        bridge_samples=metrics.latency_samples,
        bridge_p50_ms=metrics.latency_p50_ms,
        bridge_p99_ms=metrics.latency_p99_ms,
        client_samples=client_latency.count,
        client_p50_ms=client_latency.quantile(0.5),
        client_p99_ms=client_latency.quantile(0.99),
        client_p999_ms=client_latency.quantile(0.999),
    )
    detection = DetectionReport(
        kinds=scoring.kinds,
        alerts=len(run.alerts),
        reported=reported,
        explained=dict(sorted(scoring.explained.items())),
        missed=scoring.missed[:_LISTED],
        false_positives=scoring.false_positives[:_LISTED],
    )
    faults = _fault_outcomes(run, agent_reports, client_reports, truth)
    monitoring = seen.monitoring
    criteria = _criteria(
        run,
        scoring_kinds=scoring.kinds,
        false_positives=scoring.false_positives,
        events=events,
        deliveries=deliveries,
        clients=client_totals,
        supervision=supervision_counts,
        detection=detection,
        monitoring=monitoring,
        bridge_final=bridge_final,
    )
    wall_seconds = time.perf_counter() - wall_start
    return SimulationReport(
        preset=settings.preset,
        seed=spec.seed,
        clock=settings.clock,
        duration_s=spec.duration,
        simulated_s=simulated,
        threads=len(plan.thread_ids),
        clients=len(plan.clients),
        interrupted=run.interrupted,
        passed=not failed_criteria(criteria) and not run.interrupted,
        criteria=criteria,
        faults=faults,
        runs=runs,
        events=events,
        deliveries=deliveries,
        client_totals=client_totals,
        detection=detection,
        supervision=supervision_counts,
        latency=latency,
        events_per_simulated_second=round(metrics.events_accepted / simulated, 3) if simulated > 0 else 0.0,
        health=tuple(run.health),
        wall=WallClock(
            backend=_backend_name(),
            seconds=round(wall_seconds, 3),
            events_per_second=round(metrics.events_accepted / wall_seconds, 1) if wall_seconds > 0 else 0.0,
            loop_blocked_s=round(run.loop_blocked, 3),
            loop_blocks=loop_blocks,
        ),
    )


def _backend_name() -> str:
    import sniffio

    return sniffio.current_async_library()


def _count_kind(by_child: dict[str, dict[str, int]], kind: str) -> int:
    return sum(counts.get(kind, 0) for counts in by_child.values())


def _sum_dicts(dicts: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for counts in dicts:
        for key, value in counts.items():
            total[key] = total.get(key, 0) + value
    return dict(sorted(total.items()))


def _client_explanations(run: SimulationRun) -> list[Explanation]:
    """A slow reader really leaves its threads' events undelivered for a while: expected, not false positives."""
    thresholds = run.settings.runtime.monitor.thresholds
    check = run.settings.runtime.monitor.check_interval
    start_ms = run.start_ms
    explanations = []
    for client in run.plan.clients:
        for window in client.slow:
            settle = window.delay + thresholds.undelivered_after + 2 * check + 1.0
            explanations.append(
                Explanation(
                    kind=AnomalyKind.UNDELIVERED_EVENT.value,
                    fault="slow_client",
                    start=start_ms + round(window.at * 1000),
                    end=start_ms + round((window.until + settle) * 1000),
                    threads=frozenset(client.threads),
                )
            )
    return explanations


def client_latency(reports: Sequence[ClientReport]) -> LatencyHistogram:
    """The clients' delivery latencies merged into one histogram."""
    return _client_totals(reports, {})[1]


def _client_totals(
    reports: Sequence[ClientReport], produced: dict[str, int], *, require_connected: bool = True
) -> tuple[ClientTotals, LatencyHistogram]:
    latency = LatencyHistogram()
    rows = []
    complete = 0
    for report in reports:
        incomplete = tuple(
            f"{receipts.thread_id}: {receipts.last_seq}/{produced.get(receipts.thread_id, 0)}"
            for receipts in report.threads
            if receipts.last_seq < produced.get(receipts.thread_id, 0)
        )
        connected = report.connected or not require_connected
        if connected and not incomplete and len(report.threads) > 0:
            complete += 1
        rows.append(
            ClientRow(
                client_id=report.client_id,
                connections=report.connections,
                frames=report.frames,
                events=report.events,
                missing=report.missing,
                duplicates=report.duplicates,
                resumes=report.resumes,
                resume_gaps=report.resume_gaps,
                closes=report.closes,
                faults=report.faults,
                latency_p99_ms=report.latency_p99_ms,
                incomplete=incomplete if connected else ("disconnected at the end", *incomplete),
                digest=report.digest,
            )
        )
        for index, count in enumerate(report.latency_buckets):
            latency.counts[index] += count
        latency.count += report.latency_samples
        latency.max_value = max(latency.max_value, report.latency_max_ms)
    totals = ClientTotals(
        clients=len(reports),
        complete=complete,
        connections=sum(report.connections for report in reports),
        frames=sum(report.frames for report in reports),
        events=sum(report.events for report in reports),
        missing=sum(report.missing for report in reports),
        duplicates=sum(report.duplicates for report in reports),
        resumes=sum(report.resumes for report in reports),
        resume_gaps=sum(report.resume_gaps for report in reports),
        closes=_sum_dicts(report.closes for report in reports),
        per_client=tuple(rows),
    )
    return totals, latency


def _fault_outcomes(
    run: SimulationRun, agents: Sequence[AgentReport], clients: Sequence[ClientReport], truth: Sequence[GroundTruth]
) -> tuple[FaultOutcome, ...]:
    """Per ``--fault``: how many occurrences were planned (scenarios: runs that drew one) and how many took effect
    (scenarios: ground truth emitted; a stale run, say, emits it only once it has gone silent)."""
    plan = run.plan
    by_clients = _sum_dicts(report.faults for report in clients)
    drawn = _sum_dicts(agent.scenarios for agent in agents)
    emitted: dict[str, int] = {}
    for entry in truth:
        emitted[entry.fault] = emitted.get(entry.fault, 0) + 1
    outcomes = []
    for fault in plan.spec.faults:
        fault_class = fault.fault_class
        planned = plan.scheduled.get(fault.text, 0)
        if fault_class is FaultClass.RUNTIME:
            details = run.outcomes_by_spec.get(fault.text, [])
            applied = sum(1 for detail in details if not detail.startswith("skipped"))
            summary = _summarise(details)
        elif fault_class is FaultClass.CLIENT:
            planned = _planned_client_faults(plan, fault.name)
            applied = by_clients.get(fault.name, 0)
            summary = "applied by the clients" + ("" if applied == planned else " (the rest fell while offline)")
        elif fault_class is FaultClass.STREAM:
            applied = emitted.get(fault.name, 0)
            summary = "bursts emitted"
        else:
            if fault.share is not None:
                planned = drawn.get(fault.name, 0)
            applied = emitted.get(fault.name, 0)
            summary = "scenario runs emitted" + (
                "" if applied >= planned else " (the rest found no run before the end)"
            )
        outcome = FaultOutcome(name=fault.name, spec=fault.text, planned=planned, applied=applied, detail=summary)
        outcomes.append(outcome)
    return tuple(outcomes)


def _planned_client_faults(plan: SimulationPlan, name: str) -> int:
    total = 0
    for client in plan.clients:
        if name == "slow_client":
            total += len(client.slow)
        elif name == "client_disconnect":
            total += len(client.outages)
        else:
            total += len(client.send_failures)
    return total


def _summarise(details: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for detail in details:
        counts[detail] = counts.get(detail, 0) + 1
    return "; ".join(f"{count}x {detail}" if count > 1 else detail for detail, count in counts.items())


def _criteria(
    run: SimulationRun,
    *,
    scoring_kinds: Sequence[Any],
    false_positives: Sequence[Detection],
    events: EventCounts,
    deliveries: DeliveryCounts,
    clients: ClientTotals,
    supervision: SupervisionCounts,
    detection: DetectionReport,
    monitoring: str,
    bridge_final: bool,
) -> tuple[Criterion, ...]:
    plan = run.plan
    criteria: list[Criterion] = []
    scores = {kind.kind: kind for kind in scoring_kinds}
    expected = [fault.name for fault in plan.spec.faults if fault.name in _SCENARIO_ANOMALY]
    if any(fault.name == "lying_component" for fault in plan.runtime_faults):
        expected.append("lying_component")
    for fault_name in dict.fromkeys(expected):
        kind = _SCENARIO_ANOMALY[fault_name]
        kind_score = scores.get(kind)
        if kind_score is None or kind_score.injected == 0:
            criteria.append(Criterion(name=f"detect.{kind}", passed=False, detail="planned but never injected"))
            continue
        passed = kind_score.recall == 1.0 and kind_score.false_positives == 0
        latency = (
            ""
            if kind_score.latency_p50_ms is None
            else f"; latency p50 {kind_score.latency_p50_ms} ms, max {kind_score.latency_max_ms} ms"
        )
        criteria.append(
            Criterion(
                name=f"detect.{kind}",
                passed=passed,
                detail=f"{kind_score.true_positives} of {kind_score.injected} detected, "
                f"{kind_score.false_positives} false positives{latency}",
            )
        )
    injected_kinds = {_SCENARIO_ANOMALY[name] for name in expected}
    others = [detection for detection in false_positives if detection.kind not in injected_kinds]
    criteria.append(
        Criterion(
            name="detect.no_unexpected_anomalies",
            passed=not others,
            detail="none"
            if not others
            else f"{len(others)}: " + ", ".join(sorted({f"{item.kind} on {item.thread_id}" for item in others[:5]})),
        )
    )
    criteria.append(
        Criterion(
            name="alerts.all_dispatched",
            passed=detection.alerts == detection.reported,
            detail=f"{detection.alerts} alerts reached the sink of {detection.reported} reported",
        )
    )
    rejected = sum(events.rejected.values())
    criteria.append(
        Criterion(
            name="events.conserved",
            passed=events.conserved,
            detail=f"produced {events.produced:,}"
            + (f" + {events.injected_invalid:,} malformed publishes" if events.injected_invalid else "")
            + f" == accepted {events.accepted:,} + rejected {rejected:,}",
        )
    )
    dropped = sum(deliveries.dropped.values())
    criteria.append(
        Criterion(
            name="deliveries.conserved",
            passed=deliveries.conserved,
            detail=f"owed {deliveries.owed:,} == delivered {deliveries.delivered:,} + coalesced "
            f"{deliveries.coalesced:,} + dropped {dropped:,} + in flight {deliveries.in_flight:,}",
        )
    )
    receipts_match = clients.frames == deliveries.delivered and clients.events == (
        deliveries.delivered + deliveries.coalesced
    )
    if bridge_final:
        criteria.append(
            Criterion(
                name="clients.receipts_match_bridge",
                passed=receipts_match,
                detail=f"clients received {clients.frames:,} frames covering {clients.events:,} events; "
                f"the bridge sent {deliveries.delivered:,} frames covering "
                f"{deliveries.delivered + deliveries.coalesced:,}",
            )
        )
    criteria.append(
        Criterion(
            name="clients.in_order",
            passed=clients.missing == 0 and clients.duplicates == 0 and clients.resume_gaps == 0,
            detail=f"{clients.missing} missing, {clients.duplicates} duplicates, {clients.resume_gaps} resume gaps "
            f"over {clients.resumes} resumes",
        )
    )
    incomplete = [row for row in clients.per_client if row.incomplete]
    criteria.append(
        Criterion(
            name="clients.complete",
            passed=not incomplete and clients.complete == clients.clients,
            detail=f"{clients.complete} of {clients.clients} clients got every event of every thread they follow"
            + (
                ""
                if not incomplete
                else "; " + "; ".join(f"{row.client_id}: {', '.join(row.incomplete[:2])}" for row in incomplete[:3])
            ),
        )
    )
    criteria.append(
        Criterion(
            name="bridge.never_restarted",
            passed=supervision.bridge_restarts == 0,
            detail=f"{supervision.bridge_restarts} bridge failures or restarts",
        )
    )
    monitor_faults = [fault for fault in plan.runtime_faults if fault.name.startswith("monitor_")]
    if monitor_faults:
        criteria.append(
            Criterion(
                name="monitor.recovered",
                passed=monitoring == "running",
                detail=f"monitoring is {monitoring} at the end, after {len(monitor_faults)} monitor faults "
                f"({supervision.restarts} restarts, {supervision.detaches} detaches)",
            )
        )
    hangs = sum(1 for detail in run.outcomes.get("monitor_hang", []) if detail == "hung the monitor")
    if hangs:
        criteria.append(
            Criterion(
                name="monitor.hang_cancelled",
                passed=supervision.handler_timeouts >= hangs,
                detail=f"{supervision.handler_timeouts} handlers cancelled at their deadline for {hangs} hangs",
            )
        )
    return tuple(criteria)


#: The anomaly kind each detection scenario is scored as.
_SCENARIO_ANOMALY: Final = {
    **{name: name for name, rule in FAULT_CATALOG.items() if rule.fault_class in (FaultClass.RUN, FaultClass.STREAM)},
    "lying_component": AnomalyKind.HEALTH_CLAIM_MISMATCH.value,
}
