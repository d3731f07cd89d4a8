from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

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

    :param min_routed: the flow check needs at least this many events routed to connections (since the last
        conclusive audit, or since the current delivery stall began)
    :param min_delivery_ratio: below this share of those routed events delivered, while some thread's delivery is
        stalled now (an ``undelivered_event`` with no confirmation past it since), a "healthy" claim is a lie
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
    """What the monitor saw of the event flow of the component its tap comes from (the bridge).

    Two kinds of evidence. **Per audit window** (since the last conclusive audit, see :meth:`reset`): events tapped,
    routed to connections and delivered. ``delivered`` counts what the bridge's writers sent (summed over the
    connections), ``overdue`` the ``undelivered_event`` anomalies found. **Now**: ``stalled`` maps each thread whose
    delivery is stalled to the first seq found overdue, from its ``undelivered_event`` until a confirmation reaches
    that seq (its delivery moved past the stall) or its last connection leaves. A stall outlives the window it began
    in, so an audit whose window straddles the onset of a failure cannot hide it from the next one; and the routed
    and delivered counts **since the current stall began** (:attr:`routed_since_stall`,
    :attr:`delivered_since_stall`) judge delivery after the onset without the deliveries from before it.

    :param max_stalled: most stalled threads remembered (a bound on memory: one is enough to make a window
        judgeable); beyond it the oldest stall is forgotten
    """

    __slots__ = (
        "_delivered_before",
        "_max_stalled",
        "_routed_before",
        "delivered",
        "overdue",
        "routed",
        "stalled",
        "tapped",
    )

    def __init__(self, *, max_stalled: int = 100_000) -> None:
        if isinstance(max_stalled, bool) or not isinstance(max_stalled, int) or max_stalled < 1:
            raise ValueError(f"FlowWindow.max_stalled must be an int >= 1, got {max_stalled!r}")
        self._max_stalled = max_stalled
        self.tapped = 0
        self.routed = 0
        self.delivered = 0
        self.overdue = 0
        self.stalled: dict[str, int] = {}
        # routed/delivered since the current stall began = these offsets + the window's own counts (the offsets
        # carry what earlier windows counted since then, minus what the window had counted when it began).
        self._routed_before = 0
        self._delivered_before = 0

    @property
    def routed_since_stall(self) -> int:
        """Events routed to connections since the current stall began (0 while nothing is stalled)."""
        return self._routed_before + self.routed if self.stalled else 0

    @property
    def delivered_since_stall(self) -> int:
        """Events delivered since the current stall began (0 while nothing is stalled)."""
        return self._delivered_before + self.delivered if self.stalled else 0

    def reset(self) -> None:
        """Start a new window (after a conclusive periodic audit); the stalls, which are state now, are kept."""
        self._routed_before += self.routed
        self._delivered_before += self.delivered
        self.tapped = 0
        self.routed = 0
        self.delivered = 0
        self.overdue = 0

    def delivery_stalled(self, thread_id: str, seq: int) -> None:
        """Note an ``undelivered_event``: events of ``thread_id`` from ``seq`` on were not delivered in time."""
        self.overdue += 1
        stalled = self.stalled
        if not stalled:
            # A new stall: count what is routed and delivered from now on.
            self._routed_before = -self.routed
            self._delivered_before = -self.delivered
        elif thread_id not in stalled and len(stalled) >= self._max_stalled:
            del stalled[next(iter(stalled))]
        stalled.setdefault(thread_id, seq)

    def delivery_progressed(self, confirmed: Mapping[str, int], unsubscribed: Iterable[str] = ()) -> None:
        """Note a delivery report: a stalled thread whose confirmation reached its first overdue seq, or whose last
        connection left, is no longer stalled.

        :param confirmed: per thread, the highest seq confirmed delivered to every subscribed connection
        :param unsubscribed: threads whose last connection left
        """
        stalled = self.stalled
        if not stalled:
            return  # the usual case: nothing stalled, nothing to look up
        if len(stalled) <= len(confirmed):
            moved = [thread_id for thread_id, first in stalled.items() if confirmed.get(thread_id, 0) >= first]
        else:
            moved = [thread_id for thread_id, seq in confirmed.items() if seq >= stalled.get(thread_id, seq + 1)]
        for thread_id in moved:
            del stalled[thread_id]
        for thread_id in unsubscribed:
            stalled.pop(thread_id, None)


class FlowVerdict(enum.Enum):
    """What the flow evidence says about a claim of health."""

    #: Too few events routed, or the routed ones merely in flight: it proves nothing either way.
    UNJUDGEABLE = "unjudgeable"
    #: Enough of the routed events were delivered, or nothing is stalled and enough was delivered (a backlog caught
    #: up with while nothing new was routed): a healthy claim is borne out.
    DELIVERING = "delivering"
    #: Deliveries are stalled now and (almost) nothing routed since the stall began, or since the last audit, was
    #: delivered: a healthy claim is a lie.
    STALLED = "stalled"


def judge_flow(flow: FlowWindow, policy: AuditPolicy) -> tuple[FlowVerdict, str]:
    """Judge the observed flow: is the component the tap comes from delivering?

    Stalled, when some thread's delivery is stalled now (an ``undelivered_event`` not yet followed by a confirmation
    reaching it) and, over at least ``policy.min_routed`` routed events, fewer than ``policy.min_delivery_ratio`` of
    them were delivered, counting either since the stall began or since the last conclusive audit. The first
    judges a failure in the audit right after it, whatever share of the window came before its onset; the second, a
    failure that began while some other thread's delivery was already stalled (a slow client not yet closed).
    Delivering, when at least ``min_routed`` events were routed since the last conclusive audit and that share of
    them was delivered; or when nothing is stalled and at least ``min_routed`` events were delivered since (a
    bridge that caught up with a backlog in a quiet spell: without it, the end of a failure followed by a spell with
    nothing new routed would never be judged, and a later failure would pass for the same, already reported, one).
    Otherwise unjudgeable: too few events, or events merely in flight, prove nothing.

    :return: the verdict and, when stalled, the finding that says why
    """
    if flow.stalled:
        ratio = policy.min_delivery_ratio
        for since, routed, delivered in (
            ("since its delivery stalled", flow.routed_since_stall, flow.delivered_since_stall),
            ("since the last audit", flow.routed, flow.delivered),
        ):
            if routed >= policy.min_routed and delivered < ratio * routed:
                threads = len(flow.stalled)
                return FlowVerdict.STALLED, (
                    f"claims healthy but delivered {delivered} of {routed} events routed to connections {since} "
                    f"({delivered / routed:.0%} < {ratio:.0%}); {threads} thread{'s' if threads != 1 else ''} "
                    "with undelivered events and no delivery confirmed past them"
                )
    if flow.routed >= policy.min_routed and flow.delivered >= policy.min_delivery_ratio * flow.routed:
        return FlowVerdict.DELIVERING, ""
    if not flow.stalled and flow.delivered >= policy.min_routed:
        return FlowVerdict.DELIVERING, ""
    return FlowVerdict.UNJUDGEABLE, ""


def flow_judgeable(flow: FlowWindow, policy: AuditPolicy) -> bool:
    """Whether the flow is enough to judge a claim of health, either way (see :func:`judge_flow`)."""
    return judge_flow(flow, policy)[0] is not FlowVerdict.UNJUDGEABLE


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
        # failures: the flow only proves a lie while some routed event is overdue and unconfirmed now.
        if flow is not None:
            verdict, finding = judge_flow(flow, policy)
            if verdict is FlowVerdict.STALLED:
                findings.append(finding)
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
