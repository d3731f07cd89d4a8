from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from actors import Actor, ActorNotFound, MailboxSpec, Overflow
from actors.chat._anomaly import Anomaly
from actors.process import ActorRecipe, ProcessIsolation
from actors.process._chat_monitor import (
    FetchMemory,
    FinishedRunsLog,
    HostMailbox,
    MemorySync,
    MonitorPlacement,
    snapshot_of,
)

from ._spec import ChildSpec

if TYPE_CHECKING:
    from actors.chat._monitor import MonitorConfig, MonitorMemory

logger = logging.getLogger("agentwatch.monitor")


class MonitorMemoryKeeper(Actor[Any]):
    """Keeps the MonitorMemory in the parent for a monitor that runs in a worker process (killed at any time).

    Each anomaly the monitor reports comes here first (recorded, so that no later instance reports it again), then
    goes to the alert dispatcher; the rest of the memory is synced every ``check_interval``. The finished runs are
    also kept encoded, as the syncs bring them, so that a restarting monitor's FetchMemory costs the parent's event
    loop (which the bridge shares) no per-run work (:class:`FinishedRunsLog`).

    :param memory: the runtime's memory (``Runtime.memory``)
    :param alerts: the AlertDispatcher's name
    :param monitor: the monitor's (host's) name, told its mailbox figures after each sync
    """

    def __init__(self, memory: MonitorMemory, *, alerts: str, monitor: str) -> None:
        self.memory = memory
        self.alerts = alerts
        self.monitor = monitor
        #: ``memory.finished`` as a restarting monitor receives it, encoded as the syncs bring it (see the class).
        self.finished = FinishedRunsLog.of(memory.finished)

    async def receive(self, message: Any) -> Any:
        match message:
            case Anomaly():
                self._record(message)
            case FetchMemory():
                snapshot = snapshot_of(self.memory, self.finished)
                self.memory.instances += 1  # as the instance that asked does with its copy
                return snapshot
            case MemorySync():
                self._apply(message)
            case _:
                logger.warning("monitor memory keeper: ignoring unknown message %r", type(message).__name__)
        return None

    def _record(self, anomaly: Anomaly) -> None:
        memory = self.memory
        if memory.reported.add(anomaly.key):
            memory.alerts.append(anomaly)
            memory.by_kind[anomaly.kind.value] += 1
        try:
            self.system.lookup(self.alerts).tell(anomaly)
        except ActorNotFound:
            self.system.dead_letters.record(self.alerts, "not_found", anomaly)

    def _apply(self, sync: MemorySync) -> None:
        memory = self.memory
        memory.last_tapped = sync.last_tapped
        memory.components = {component.component_id: component for component in sync.components}
        memory.audits = dict(sync.audits)
        memory.mismatch_since = dict(sync.mismatch_since)
        memory.claims = dict(sync.claims)
        memory.direct.extend(sync.direct)
        memory.suppressed = sync.suppressed
        memory.rebuilt_events = sync.rebuilt_events
        memory.poisoned = dict.fromkeys(sync.poisoned)
        memory.poisoned_total = sync.poisoned_total
        # The log records the table's insertions, in order: its newest ``capacity`` runs are then the table itself.
        table = memory.finished
        fresh = [entry for entry in sync.finished if (entry[0], entry[1]) not in table]
        for thread_id, run_id, finished_at in fresh:
            table.add((thread_id, run_id), finished_at)
        self.finished.append(fresh)
        try:
            host = self.system.lookup(self.monitor)
        except ActorNotFound:
            return
        stats = host.statistics()
        host.tell(HostMailbox(queued=stats.queued, dropped=stats.dropped_total, capacity=stats.mailbox.capacity))


def process_monitor_specs(
    config: MonitorConfig,
    memory: MonitorMemory,
    *,
    bridge: str,
    alerts: str,
    branch: str,
    mailbox: MailboxSpec,
    handler_timeout: float,
    isolation: ProcessIsolation | None = None,
) -> list[ChildSpec]:
    """The monitoring branch's children that run the monitor in a worker process: the memory keeper, the monitor.

    :param branch: the monitoring supervisor's name (children are named ``<branch>/<id>``)
    """
    options = isolation if isolation is not None else ProcessIsolation()
    keeper_name = f"{branch}/memory"
    monitor_name = f"{branch}/monitor"

    def keeper() -> MonitorMemoryKeeper:
        return MonitorMemoryKeeper(memory, alerts=alerts, monitor=monitor_name)

    recipe = ActorRecipe(
        "actors.process._chat_monitor:build_process_monitor",
        config,
        MonitorPlacement(bridge=bridge, memory=keeper_name),
    )
    return [
        ChildSpec("memory", keeper, mailbox=MailboxSpec(capacity=10_000, overflow=Overflow.DROP_NEWEST), shutdown=1.0),
        ChildSpec(
            "monitor",
            recipe,
            mailbox=mailbox,
            handler_timeout=handler_timeout,
            # Room for the worker's graceful stop, then SIGTERM, before the supervisor would cancel its host.
            shutdown=max(2.0, options.graceful_budget + 0.5),
            isolation=options,
        ),
    ]
