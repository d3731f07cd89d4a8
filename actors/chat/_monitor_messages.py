from __future__ import annotations

from typing import Any

import msgspec

from actors import ActorRef, Message

from ._audit import AuditPolicy, AuditResult
from ._components import ComponentHealthChanged, ComponentReport
from ._detection import REBUILD_SLICE, DetectionThresholds, TrackerStatistics
from ._events import AgentEvent, StampedEvent
from ._tap import DeliveryProgress

# The ChatEventMonitor's protocol: its settings, the messages it accepts and the reports it answers with. Apart
# from the actor, so that the seed API's handle (_monitor_handle.py) can speak it without importing the actor.


class MonitorConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ChatEventMonitor's settings (durations in seconds).

    :param thresholds: the detectors' thresholds
    :param check_interval: how often pending deadlines (stuck tools, stale threads, undelivered events) are checked;
        an anomaly is reported at most this long after its threshold passed
    :param audit_interval: how often every registered component is audited (0 disables periodic audits)
    :param audit_timeout: how long reading a component's health may take before it counts as unresponsive
    :param audit: when a claim of health is called a lie
    :param reported_keys: how many anomaly keys are remembered to report each anomaly once, across restarts
    :param alert_history: how many recent anomalies ``check_health()`` and the summary keep
    :param rebuild_timeout: how long a (re)starting monitor waits for the bridge's replay snapshot
    :param direct_replay: how many events reported directly (``record_event``) are kept in :class:`MonitorMemory`
        so that a restarted monitor rebuilds their runs too (the bridge's rings only hold tapped events)
    :param finished_runs: how many finished runs :class:`MonitorMemory` remembers, so that a restarted monitor
        does not take a run whose RUN_FINISHED left the replay rings for one still in flight
    :param rebuild_slice: how many replayed events a (re)starting monitor handles before it lets the event loop
        run other tasks (the bridge among them)
    """

    thresholds: DetectionThresholds = DetectionThresholds()
    check_interval: float = 1.0
    audit_interval: float = 10.0
    audit_timeout: float = 2.0
    audit: AuditPolicy = AuditPolicy()
    reported_keys: int = 100_000
    alert_history: int = 1000
    rebuild_timeout: float = 5.0
    direct_replay: int = 10_000
    finished_runs: int = 100_000
    rebuild_slice: int = REBUILD_SLICE

    def __post_init__(self) -> None:
        for name in ("check_interval", "audit_timeout", "rebuild_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"MonitorConfig.{name} must be > 0 seconds, got {value!r}")
        if isinstance(self.audit_interval, bool) or not self.audit_interval >= 0:
            raise ValueError(f"MonitorConfig.audit_interval must be >= 0 seconds, got {self.audit_interval!r}")
        for name in ("reported_keys", "alert_history", "direct_replay", "finished_runs", "rebuild_slice"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MonitorConfig.{name} must be an int >= 1, got {value!r}")


class RegisteredComponent(msgspec.Struct, frozen=True, kw_only=True):
    """A component under audit: its proxy and whether the monitor's tap observes its event flow (the bridge)."""

    component_id: str
    proxy: ActorRef[Any]
    observes_flow: bool


# -- messages -------------------------------------------------------------------------------------------------


class RecordEvent(Message, frozen=True, kw_only=True):
    """An event reported to the monitor directly (the seed's ``record_event``), not through the bridge's tap."""

    thread_id: str
    run_id: str
    event: AgentEvent
    observed_at: int | None = None


class SetMonitoring(Message, frozen=True, kw_only=True):
    enabled: bool


class CheckHealth(Message, frozen=True, kw_only=True):
    """Asks the monitor for its own health; the reply is a :class:`MonitorHealth` (``check_health()`` sends it)."""


class RegisterComponent(Message, frozen=True, kw_only=True):
    component: RegisteredComponent


class UnregisterComponent(Message, frozen=True, kw_only=True):
    component_id: str


class JudgeReport(Message, frozen=True, kw_only=True):
    """Cross-validate a report read on demand (``audit_component``); the reply is the AuditResult."""

    report: ComponentReport | None
    component_id: str
    unresponsive: bool = False


class GetAuditSummary(Message, frozen=True, kw_only=True):
    pass


class GetAlerts(Message, frozen=True, kw_only=True):
    pass


class _Tick(Message, frozen=True, kw_only=True):
    pass


class _AuditRound(Message, frozen=True, kw_only=True):
    pass


MonitorMessage = (
    StampedEvent
    | DeliveryProgress
    | RecordEvent
    | SetMonitoring
    | CheckHealth
    | RegisterComponent
    | UnregisterComponent
    | JudgeReport
    | ComponentReport
    | ComponentHealthChanged
    | GetAuditSummary
    | GetAlerts
    | _Tick
    | _AuditRound
)


class MonitorHealth(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The monitor's own health (``check_health()``).

    ``status`` is ``degraded`` when its mailbox is more than half full, tapped events were dropped, or monitoring
    is paused (``reasons`` says which); ``components`` maps each audited component to its last verdict;
    ``suppressed_while_paused`` counts anomalies found while monitoring was paused.
    """

    status: str
    reasons: tuple[str, ...]
    monitoring: bool
    backlog: int
    tap_drops: int
    events_observed: int
    runs_in_flight: int
    anomalies_by_kind: dict[str, int]
    components: dict[str, str]
    instance: int
    tracker: TrackerStatistics
    suppressed_while_paused: int = 0


class AuditSummary(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """``get_component_audit_summary()``: every registered component's last claim and audit verdict.

    ``components`` maps each registered component to its last audit (None before the first); ``claims`` holds the
    latest status each one claimed, pushed through its observer or read by an audit.
    """

    total_components: int
    healthy: int
    mismatched: tuple[str, ...]
    unresponsive: tuple[str, ...]
    components: dict[str, AuditResult | None]
    claims: dict[str, str] = {}
