from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from actors.sim._report import Criterion

from .app import MONITORING, ROOT

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._config import SupervisionSettings
    from ._sim_collect import Observations
    from ._sim_run import SimulationRun, TimelineEntry


class DetachForecast(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`predict_detaches` expects: when the monitoring branch fails, is detached, and is re-attached."""

    branch_failures: list[float]
    detaches: list[float]
    reattaches: list[float]


def predict_detaches(failures: Sequence[float], supervision: SupervisionSettings) -> DetachForecast:
    """OTP's restart intensity at two levels, and the branch's circuit breaker: from the monitor's failure times,
    when the monitoring branch fails, when it is detached and when it is re-attached.

    A failure at t is one too many when more than ``intensity`` failures (itself included) lie within
    ``[t - period, t]``. One too many of the monitor's fails the branch (restarted with a fresh monitor budget); one
    too many of the branch's detaches it. It is re-attached a cool-down later as a half-open probe, with fresh
    budgets: a branch failure before the probe has lasted ``monitoring_period`` detaches it again at once and
    doubles the cool-down (up to ``max_detach_cooldown``); a probe that lasts resets the cool-down.
    """
    s = supervision
    monitor: list[float] = []
    branch: list[float] = []
    forecast = DetachForecast(branch_failures=[], detaches=[], reattaches=[])
    cooldown = s.detach_cooldown
    probing_since: float | None = None
    back_at: float | None = None

    def detach(at: float) -> float:
        forecast.detaches.append(at)
        forecast.reattaches.append(at + cooldown)
        return at + cooldown

    for at in failures:
        if back_at is not None:
            if at < back_at:
                continue  # detached: no monitor to fail (the driver's crashes are skipped)
            probing_since, back_at, monitor, branch = back_at, None, [], []
        if probing_since is not None and at >= probing_since + s.monitoring_period:
            probing_since, cooldown = None, s.detach_cooldown  # the probe passed
        monitor = [t for t in [*monitor, at] if t >= at - s.monitor_period]
        if len(monitor) <= s.monitor_intensity:
            continue
        monitor = []
        forecast.branch_failures.append(at)
        if probing_since is not None:
            cooldown = min(cooldown * 2.0, s.max_detach_cooldown)
            probing_since, back_at = None, detach(at)
            continue
        branch = [t for t in [*branch, at] if t >= at - s.monitoring_period]
        if len(branch) > s.monitoring_intensity:
            back_at = detach(at)
    return forecast


def event_times(timeline: Sequence[TimelineEntry], kind: str, supervisor: str, child: str) -> list[float]:
    return [e.at for e in timeline if e.kind == kind and e.supervisor == supervisor and e.child_id == child]


def intensity_criteria(run: SimulationRun, seen: Observations) -> list[Criterion]:
    """Figure 2: the detaches and re-attaches the model predicts, no escalation by the root, health while detached."""
    supervision = run.settings.runtime.supervision
    timeline = seen.timeline
    failures = event_times(timeline, "failed", MONITORING, "monitor")
    branch_failed = event_times(timeline, "failed", ROOT, "monitoring")
    detached = event_times(timeline, "detached", ROOT, "monitoring")
    reattached = event_times(timeline, "reattached", ROOT, "monitoring")
    forecast = predict_detaches(failures, supervision)

    def same(left: Sequence[float], right: Sequence[float]) -> bool:
        return [round(t, 6) for t in left] == [round(t, 6) for t in right]

    exact = same(forecast.detaches, detached) and same(forecast.branch_failures, branch_failed)
    first_off = next(
        (
            f"; first difference: predicted {p - run.start:.3f} s, detached {d - run.start:.3f} s"
            for p, d in zip(forecast.detaches, detached, strict=False)
            if round(p, 6) != round(d, 6)
        ),
        "",
    )
    criteria = [
        Criterion(
            name="intensity.detached_at_budget",
            passed=exact and len(detached) > 0,
            detail=f"{len(failures):,} monitor failures -> {len(branch_failed)} branch failures (model: "
            f"{len(forecast.branch_failures)}) -> {len(detached)} detaches (model: {len(forecast.detaches)}), each at "
            f"the instant the model predicts: {'yes' if exact else 'no'}{first_off}",
        )
    ]
    # The branch's own supervisor escalates each time the monitor exhausts its budget (that is the branch failing);
    # the root must never escalate.
    escalated = [e for e in timeline if e.kind == "escalated" and e.supervisor == ROOT]
    criteria.append(
        Criterion(
            name="intensity.root_never_escalated",
            passed=not escalated,
            detail=f"{len(escalated)} escalations by the root",
        )
    )
    end = seen.simulated + run.start
    due = [t for t in forecast.reattaches if t <= end]
    on_time = [t for t in due if any(abs(r - t) < 0.001 for r in reattached)]
    criteria.append(
        Criterion(
            name="intensity.reattached_after_cooldown",
            passed=len(on_time) == len(due) == len(reattached) and len(due) > 0,
            detail=f"{len(on_time)} of {len(due)} re-attaches at the predicted instant (cool-down "
            f"{supervision.detach_cooldown:g} s, doubled after a failed half-open probe up to "
            f"{supervision.max_detach_cooldown:g} s); {len(reattached)} re-attaches in all",
        )
    )
    wrong = [s for s in run.readiness if not s.ready or s.status != "degraded"]
    detached_samples = [s for s in run.readiness if s.monitoring == "detached"]
    criteria.append(
        Criterion(
            name="health.ready_and_degraded_while_detached",
            passed=not wrong and len(detached_samples) > 0,
            detail=f"{len(run.readiness):,} of {run.readiness_samples:,} health samples with monitoring not running "
            f"({len(detached_samples):,} detached): ready and degraded in "
            f"{len(run.readiness) - len(wrong):,}"
            + (f"; first wrong: {msgspec.json.encode(wrong[0]).decode()}" if wrong else ""),
        )
    )
    return criteria
