"""Fault injection: crash, hang, slow, block or flood any actor or client, record it, and check what survived.

Every injector targets a ref (or a registered name), is seeded where it is random, bounded in time if asked, and
reversible: ``async with inject(system, "agentwatch/monitoring/monitor", Crash(every=5)):`` undoes itself on exit.
Each injection, trigger, observed effect and revert is appended to a :class:`FaultHistory`, which checkers read
afterwards (generator -> injector -> history -> checker, as in Jepsen). See ``docs/fault-injection.md``.
"""

from __future__ import annotations

from ._actor_faults import BlockLoop, Crash, CrashOnStart, Fault, Hang, InjectedFault, Poison, PoisonPill, Slow
from ._checks import (
    BudgetReport,
    CheckFailed,
    CheckResult,
    LatencyComparison,
    added_latency,
    anomaly_keys,
    check_bridge_accounting,
    check_delivery,
    check_exactly_once,
    check_history,
    check_mailbox,
    critical_path_budget,
)
from ._clients import BridgeClient, ClientClose, ClientSink, Delivery, DeliveryLog
from ._components import LyingComponent, hanging_sink, raising_sink
from ._history import FaultHistory, FaultRecord
from ._injection import FaultInjector, Injection, crash_once, flood, inject, record_supervision
from ._plan import FrameMutation, Schedule, malformed_frames, run_schedule

__all__ = [
    "BlockLoop",
    "BridgeClient",
    "BudgetReport",
    "CheckFailed",
    "CheckResult",
    "ClientClose",
    "ClientSink",
    "Crash",
    "CrashOnStart",
    "Delivery",
    "DeliveryLog",
    "Fault",
    "FaultHistory",
    "FaultInjector",
    "FaultRecord",
    "FrameMutation",
    "Hang",
    "InjectedFault",
    "Injection",
    "LatencyComparison",
    "LyingComponent",
    "Poison",
    "PoisonPill",
    "Schedule",
    "Slow",
    "added_latency",
    "anomaly_keys",
    "check_bridge_accounting",
    "check_delivery",
    "check_exactly_once",
    "check_history",
    "check_mailbox",
    "crash_once",
    "critical_path_budget",
    "flood",
    "hanging_sink",
    "inject",
    "malformed_frames",
    "raising_sink",
    "record_supervision",
    "run_schedule",
]
