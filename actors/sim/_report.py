from __future__ import annotations

from typing import TYPE_CHECKING, Final

import msgspec

# Imported at run time: msgspec reads the annotations of the report's structs.
from actors.sim._scoring import Detection, KindScore
from actors.sim._scripts import GroundTruth

if TYPE_CHECKING:
    from collections.abc import Sequence

#: The report's schema version; bumped on any incompatible change.
REPORT_VERSION: Final = 1


class _Part(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Shared conventions of the report's parts: camelCase keys, like the AG-UI events and the replay report."""


class Criterion(_Part, frozen=True, kw_only=True):
    """One pass/fail check of the run, with the figures behind it."""

    name: str
    passed: bool
    detail: str


class FaultOutcome(_Part, frozen=True, kw_only=True):
    """What became of one ``--fault``: how often it was planned, how often it took effect, and how."""

    name: str
    spec: str
    planned: int
    applied: int
    detail: str = ""


class RunCounts(_Part, frozen=True, kw_only=True):
    """Agent runs: started, ended (by their first completion), and those with a scenario injected."""

    started: int
    finished: int
    errored: int
    unfinished: int
    scenarios: dict[str, int]


class EventCounts(_Part, frozen=True, kw_only=True):
    """Events the agents produced and what the bridge did with them.

    ``produced + injectedInvalid == accepted + rejected`` (rejected: ``inbox_full``, ``invalid_event``) when
    ``conserved``; ``injectedInvalid`` counts the malformed publishes of ``malformed_input``, which no agent produced.
    """

    produced: int
    accepted: int
    rejected: dict[str, int]
    routed: int
    unrouted: int
    conserved: bool
    injected_invalid: int = 0


class DeliveryCounts(_Part, frozen=True, kw_only=True):
    """(event, connection) pairs the bridge owed, by outcome.

    ``owed`` = routed live (``fanOutTotal``) + replayed on resume; ``delivered`` counts events sent in a frame of
    their own, ``coalesced`` those merged into a later frame; ``dropped`` is by reason (``discarded_on_close``,
    ``deferred_on_close``: owed to a connection that closed; a client that resumes gets them from the ring);
    ``in_flight`` is queued or held back. ``conserved``: ``owed == delivered + coalesced + dropped + in_flight``.
    """

    owed: int
    delivered: int
    coalesced: int
    dropped: dict[str, int]
    in_flight: int
    conserved: bool
    monitor_taps: int
    monitor_taps_lost: int


class ClientRow(_Part, frozen=True, kw_only=True):
    """One client's totals (``incomplete`` lists threads it did not receive in full, as ``thread: last/expected``)."""

    client_id: str
    connections: int
    frames: int
    events: int
    missing: int
    duplicates: int
    resumes: int
    resume_gaps: int
    closes: dict[str, int]
    faults: dict[str, int]
    latency_p99_ms: float | None
    incomplete: tuple[str, ...] = ()
    digest: str = ""


class ClientTotals(_Part, frozen=True, kw_only=True):
    """Every client's receipts together; ``complete``: clients that got every event of every thread they follow
    from their first subscription to the end."""

    clients: int
    complete: int
    connections: int
    frames: int
    events: int
    missing: int
    duplicates: int
    resumes: int
    resume_gaps: int
    closes: dict[str, int]
    per_client: tuple[ClientRow, ...]


class DetectionReport(_Part, frozen=True, kw_only=True):
    """Detection against ground truth, per kind (see :class:`KindScore`).

    :param alerts: anomalies that reached the simulation's alert sink; ``reported`` those the monitor reported
    :param explained: anomalies caused as a side effect by a runtime fault, per fault (not false positives)
    :param missed: ground truth never detected (the first 50); ``false_positives`` likewise
    """

    kinds: tuple[KindScore, ...]
    alerts: int
    reported: int
    explained: dict[str, int]
    missed: tuple[GroundTruth, ...]
    false_positives: tuple[Detection, ...]


class SupervisionCounts(_Part, frozen=True, kw_only=True):
    """Supervisor actions over the run, from the tree's event stream.

    ``by_child`` maps each child's path (``agentwatch/monitoring/monitor``) to its event counts by kind;
    ``handler_timeouts`` counts failures that were a handler cancelled at its deadline (a hang).
    """

    restarts: int
    detaches: int
    reattaches: int
    escalations: int
    blocked_loop: int
    handler_timeouts: int
    bridge_restarts: int
    by_child: dict[str, dict[str, int]]


class LatencyReport(_Part, frozen=True, kw_only=True):
    """Delivery latency in ms: the bridge's (acceptance to completed send, per frame) and the clients' (receipt
    minus the event's own ``timestamp``, reading time included; injected ``high_latency`` events count too)."""

    bridge_samples: int
    bridge_p50_ms: float | None
    bridge_p99_ms: float | None
    client_samples: int
    client_p50_ms: float | None
    client_p99_ms: float | None
    client_p999_ms: float | None


class HealthPoint(_Part, frozen=True, kw_only=True):
    """One sample of the runtime's health: the bridge's status and failing checks, and the monitoring branch."""

    at_s: float
    bridge: str
    checks: tuple[str, ...]
    monitoring: str
    accepted: int
    delivered: int


class WallClock(_Part, frozen=True, kw_only=True):
    """Everything that depends on the machine rather than the seed: the one part of the report that differs
    between two runs of the same seed (and between backends).

    :param loop_blocked_s: seconds the event loop was blocked synchronously by ``monitor_block`` (real time: on
        the virtual clock no simulated time passes while it is blocked, so only this figure shows it)
    :param loop_blocks: blocks the loop-lag watchdog reported (real clock only; None when it did not run)
    """

    backend: str
    seconds: float
    events_per_second: float
    loop_blocked_s: float
    loop_blocks: int | None = None


class SimulationReport(_Part, frozen=True, kw_only=True):
    """The result of ``agentwatch simulate`` (``--json``): schema version :data:`REPORT_VERSION`.

    Everything outside ``wall`` is a function of the seed and the settings on the virtual clock. ``baseline_latency``
    is the same seed's latency without faults, for presets that compare against it (``fig1``).
    """

    version: int = REPORT_VERSION
    preset: str | None
    seed: int
    clock: str
    duration_s: float
    simulated_s: float
    threads: int
    clients: int
    interrupted: bool
    passed: bool
    criteria: tuple[Criterion, ...]
    faults: tuple[FaultOutcome, ...]
    runs: RunCounts
    events: EventCounts
    deliveries: DeliveryCounts
    client_totals: ClientTotals
    detection: DetectionReport
    supervision: SupervisionCounts
    latency: LatencyReport
    events_per_simulated_second: float
    health: tuple[HealthPoint, ...]
    wall: WallClock
    baseline_latency: LatencyReport | None = None


def report_without_wall(report: SimulationReport) -> dict[str, object]:
    """The report as plain data without its ``wall`` part: equal for two runs of the same seed (virtual clock)."""
    data = msgspec.to_builtins(report)
    assert isinstance(data, dict)
    data.pop("wall", None)
    return data


# ---------------------------------------------------------------------------------------------------- rendering


def _n(value: int) -> str:
    return f"{value:,}"


def _ms(value: float | int | None) -> str:
    return "-" if value is None else f"{value:g} ms"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _by_reason(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {_n(count)}" for reason, count in sorted(counts.items())) or "none"


def render_summary(report: SimulationReport, *, color: bool = False) -> str:
    """The human summary: what ran, what was delivered and detected, and every criterion with PASS/FAIL."""

    def verdict(passed: bool) -> str:
        word = "PASS" if passed else "FAIL"
        if not color:
            return word
        return f"\x1b[32m{word}\x1b[0m" if passed else f"\x1b[31m{word}\x1b[0m"

    wall = report.wall
    runs, events, deliveries, clients = report.runs, report.events, report.deliveries, report.client_totals
    supervision, latency = report.supervision, report.latency
    lines = [
        f"agentwatch simulate: preset {report.preset or '(none)'}, seed {report.seed}, {report.clock} clock "
        f"({wall.backend}), {report.duration_s:g} s of traffic, {report.simulated_s:g} s simulated in "
        f"{wall.seconds:.1f} s{'  [INTERRUPTED]' if report.interrupted else ''}",
        "",
        f"runs         {_n(runs.started)} started, {_n(runs.finished)} finished, {_n(runs.errored)} errored, "
        f"{_n(runs.unfinished)} unfinished; scenarios: {_by_reason(runs.scenarios)}",
        f"events       {_n(events.produced)} produced, {_n(events.accepted)} accepted, rejected: "
        f"{_by_reason(events.rejected)}; {report.events_per_simulated_second:,.1f}/s simulated, "
        f"{wall.events_per_second:,.0f}/s wall",
        f"deliveries   {_n(deliveries.owed)} owed = {_n(deliveries.delivered)} delivered + "
        f"{_n(deliveries.coalesced)} coalesced + dropped ({_by_reason(deliveries.dropped)}) + "
        f"{_n(deliveries.in_flight)} in flight",
        f"clients      {clients.clients} clients, {clients.complete} complete, {_n(clients.connections)} connections, "
        f"{_n(clients.frames)} frames, {clients.resumes} resumes, {clients.missing} missing, "
        f"{clients.duplicates} duplicates; closes: {_by_reason(clients.closes)}",
        f"latency      bridge p50 {_ms(latency.bridge_p50_ms)}, p99 {_ms(latency.bridge_p99_ms)}; clients p50 "
        f"{_ms(latency.client_p50_ms)}, p99 {_ms(latency.client_p99_ms)}"
        + (
            ""
            if report.baseline_latency is None
            else f"; without faults: bridge p99 {_ms(report.baseline_latency.bridge_p99_ms)}"
        ),
        f"supervision  {supervision.restarts} restarts ({supervision.handler_timeouts} at a handler deadline), "
        f"{supervision.detaches} detaches, {supervision.reattaches} re-attaches, {supervision.escalations} "
        f"escalations, bridge restarts {supervision.bridge_restarts}",
    ]
    statuses: dict[str, int] = {}
    for point in report.health:
        statuses[point.bridge] = statuses.get(point.bridge, 0) + 1
    if report.health:
        lines.append(f"bridge health {len(report.health)} samples: {_by_reason(statuses)}")
    if wall.loop_blocked_s:
        blocks = "" if wall.loop_blocks is None else f", {wall.loop_blocks} reported by the loop watchdog"
        lines.append(f"loop blocked {wall.loop_blocked_s:.3f} s of wall time by monitor_block{blocks}")
    lines += ["", "detection"]
    header = ("kind", "injected", "detected", "tp", "fp", "explained", "missed", "precision", "recall", "latency")
    rows = [header]
    rows.extend(
        (
            score.kind,
            str(score.injected),
            str(score.detected),
            str(score.true_positives),
            str(score.false_positives),
            str(score.explained),
            str(score.missed),
            _ratio(score.precision),
            _ratio(score.recall),
            "-" if score.latency_p50_ms is None else f"p50 {score.latency_p50_ms} / max {score.latency_max_ms} ms",
        )
        for score in report.detection.kinds
    )
    widths = [max(len(row[index]) for row in rows) for index in range(len(header))]
    for row in rows:
        cells = (cell.ljust(widths[i]) if i in (0, 9) else cell.rjust(widths[i]) for i, cell in enumerate(row))
        lines.append("  " + "  ".join(cells).rstrip())
    detection = report.detection
    for missed in detection.missed[:5]:
        lines.append(f"  missed: {missed.kind} thread={missed.thread_id} run={missed.run_id} due_at={missed.due_at}")
    for false in detection.false_positives[:5]:
        lines.append(f"  false positive: {false.kind} thread={false.thread_id} run={false.run_id}: {false.detail}")
    if report.faults:
        lines += ["", "faults"]
        width = max(len(fault.spec) for fault in report.faults)
        for fault in report.faults:
            lines.append(f"  {fault.spec.ljust(width)}  {fault.applied}/{fault.planned} applied  {fault.detail}")
    lines += ["", "criteria"]
    for criterion in report.criteria:
        lines.append(f"  {verdict(criterion.passed)}  {criterion.name}: {criterion.detail}")
    failed = [criterion.name for criterion in report.criteria if not criterion.passed]
    passed = len(report.criteria) - len(failed)
    lines.append("")
    lines.append(
        f"result: {verdict(report.passed)} ({passed} of {len(report.criteria)} criteria hold"
        + (f"; failed: {', '.join(failed)})" if failed else ")")
    )
    return "\n".join(lines)


def failed_criteria(criteria: Sequence[Criterion]) -> list[Criterion]:
    """The criteria that do not hold."""
    return [criterion for criterion in criteria if not criterion.passed]
