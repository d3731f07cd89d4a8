from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from ._components import ComponentReport


class AuditVerdict(enum.StrEnum):
    """The outcome of auditing one component."""

    #: What it claims agrees with what it is seen to do.
    CONSISTENT = "consistent"
    #: It claims to be healthy while the observed flow (or its own metrics) says it is failing.
    MISMATCH = "health_claim_mismatch"
    #: Reading its health took longer than the audit timeout (a hung component).
    UNRESPONSIVE = "unresponsive"
    #: Reading its health raised.
    FAILED = "failed"


class AuditResult(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One audit of one component: its claim, the verdict, and the findings behind it."""

    component_id: str
    audit_id: int
    at: int
    claimed: str
    verdict: AuditVerdict
    findings: tuple[str, ...] = ()
    metrics: dict[str, Any] = {}


class AuditPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """When a claim of health is called a lie.

    :param min_routed: the flow check needs at least this many events routed to connections since the last audit
    :param min_delivery_ratio: below this share of routed events confirmed delivered, with at least one of them
        overdue (an ``undelivered_event``), a "healthy" claim is a lie
    :param max_error_rate: a component reporting ``error_rate`` above this while claiming healthy is a lie
    """

    min_routed: int = 10
    min_delivery_ratio: float = 0.1
    max_error_rate: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.min_routed, bool) or not isinstance(self.min_routed, int) or self.min_routed < 1:
            raise ValueError(f"AuditPolicy.min_routed must be an int >= 1, got {self.min_routed!r}")
        if not 0 < self.min_delivery_ratio <= 1:
            raise ValueError(f"AuditPolicy.min_delivery_ratio must be in (0, 1], got {self.min_delivery_ratio!r}")
        if not 0 < self.max_error_rate <= 1:
            raise ValueError(f"AuditPolicy.max_error_rate must be in (0, 1], got {self.max_error_rate!r}")


class FlowWindow:
    """What the monitor saw of the event flow since the last audit: events routed to connections, and delivered.

    ``delivered`` counts confirmed delivery progress (per thread, the advance of the highest seq that reached every
    subscribed connection), so it needs no per-connection bookkeeping in the monitor. ``overdue`` counts the
    ``undelivered_event`` anomalies found: proof that routed events are past their delivery deadline, not merely
    still in flight or routed to a client that has since left.
    """

    __slots__ = ("delivered", "overdue", "routed", "tapped")

    def __init__(self) -> None:
        self.tapped = 0
        self.routed = 0
        self.delivered = 0
        self.overdue = 0

    def reset(self) -> None:
        """Start a new window (after an audit)."""
        self.tapped = 0
        self.routed = 0
        self.delivered = 0
        self.overdue = 0


def flow_judgeable(flow: FlowWindow, policy: AuditPolicy) -> bool:
    """Whether the flow since the last audit is enough to judge a claim of health, either way.

    It is when at least ``policy.min_routed`` events were routed and either enough of them were confirmed delivered
    (honest) or some are overdue (a lie, if too few were delivered). Too few events, or events merely in flight,
    prove nothing.
    """
    if flow.routed < policy.min_routed:
        return False
    return flow.overdue > 0 or flow.delivered >= policy.min_delivery_ratio * flow.routed


def cross_validate(report: ComponentReport, *, flow: FlowWindow | None, policy: AuditPolicy, at: int) -> AuditResult:
    """Compare what a component claims with what it is seen to do.

    :param report: the component's own health and metrics, as its proxy read them
    :param flow: the observed event flow, for the component the monitor's tap comes from (the bridge); else None
    :param policy: the thresholds
    :param at: the audit time (ms)
    :return: the verdict with its findings; honest components are never flagged
    """
    findings: list[str] = []
    if report.error is not None:
        return AuditResult(
            component_id=report.component_id,
            audit_id=report.audit_id,
            at=at,
            claimed=report.status,
            verdict=AuditVerdict.FAILED,
            findings=(f"reading its health raised {report.error}",),
        )
    if report.status == "healthy":
        # Events still in flight (a burst just before the audit) or routed to a client that left since are not
        # failures: the flow only proves a lie once some routed event is overdue.
        if flow is not None and flow.routed >= policy.min_routed and flow.overdue:
            ratio = flow.delivered / flow.routed
            if ratio < policy.min_delivery_ratio:
                findings.append(
                    f"claims healthy but delivered {flow.delivered} of {flow.routed} events routed to connections "
                    f"since the last audit ({ratio:.0%} < {policy.min_delivery_ratio:.0%}; {flow.overdue} "
                    "undelivered_event reports)"
                )
        error_rate = report.metrics.get("error_rate")
        if isinstance(error_rate, int | float) and error_rate > policy.max_error_rate:
            findings.append(f"claims healthy but reports error_rate {error_rate:.2f} > {policy.max_error_rate:.2f}")
    return AuditResult(
        component_id=report.component_id,
        audit_id=report.audit_id,
        at=at,
        claimed=report.status,
        verdict=AuditVerdict.MISMATCH if findings else AuditVerdict.CONSISTENT,
        findings=tuple(findings),
        metrics=report.metrics,
    )
