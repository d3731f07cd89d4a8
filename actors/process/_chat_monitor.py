from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Final

import msgspec

from actors import ActorError, ActorRef, Message
from actors.chat._anomaly import Anomaly, AnomalyKey, ReportedKeys
from actors.chat._audit import AuditResult
from actors.chat._bridge_messages import AttachMonitor
from actors.chat._components import ComponentHealthChanged, ComponentReport, ProbeComponent
from actors.chat._events import StampedEvent, decode_event
from actors.chat._monitor import (
    AuditSummary,
    ChatEventMonitor,
    CheckHealth,
    GetAlerts,
    GetAuditSummary,
    JudgeReport,
    MonitorConfig,
    MonitorHealth,
    MonitorMemory,
    RecordEvent,
    RegisterComponent,
    RegisteredComponent,
    SetMonitoring,
    UnregisterComponent,
)
from actors.chat._tap import DeliveryProgress, ReplaySnapshot

from ._recipe import MessageSchema, worker_factory
from ._tell_runs import WireForm
from ._worker import parent_ref

if TYPE_CHECKING:
    from actors.chat._finished_runs import FinishedRuns

logger = logging.getLogger("agentwatch.monitor")

# The ChatEventMonitor as it runs in a worker process (RuntimeConfig(monitor_isolation="process")). It lives here,
# not with the application tree in supervisors, so that a worker imports only what the monitor needs: starting one
# is then about half as long, and every restart of a killed monitor pays it.


class MonitorPlacement(msgspec.Struct, frozen=True, kw_only=True):
    """The names of the parent actors a monitor in a worker process talks to."""

    bridge: str
    memory: str


class FetchMemory(Message, frozen=True, kw_only=True):
    """Asked by a (re)starting process monitor of the parent's memory keeper: the reply is a MemorySnapshot."""


class MemorySnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """What a monitor instance inherits from the ones before it (MonitorMemory, across the process boundary)."""

    instances: int
    reported: list[AnomalyKey]
    alerts: list[Anomaly]
    by_kind: dict[str, int]
    components: list[RegisteredComponent]
    audits: dict[str, AuditResult]
    mismatch_since: dict[str, int]
    claims: dict[str, str]
    last_tapped: StampedEvent | None
    direct: list[StampedEvent]
    suppressed: int
    rebuilt_events: int
    #: The runs seen to finish, oldest first: MessagePack chunks, each a list of (thread, run, finished at ms), as
    #: FinishedRunsLog keeps them (see FinishedRuns). Together they may hold more than the table's capacity: the
    #: newest ``capacity`` entries are the table.
    finished: list[msgspec.Raw] = msgspec.field(default_factory=list)
    #: Tapped events an instance failed on, as (thread, seq), oldest first, and how many there ever were.
    poisoned: list[tuple[str, int]] = msgspec.field(default_factory=list)
    poisoned_total: int = 0


class MemorySync(Message, frozen=True, kw_only=True):
    """Told by a process monitor to the memory keeper every ``check_interval`` and when it stops.

    Reported anomalies are not in it: each one reaches the keeper as it is reported (the keeper forwards it to the
    alert dispatcher), so a monitor killed between two syncs never reports one twice.
    """

    last_tapped: StampedEvent | None
    components: list[RegisteredComponent]
    audits: dict[str, AuditResult]
    mismatch_since: dict[str, int]
    claims: dict[str, str]
    direct: list[StampedEvent]
    suppressed: int
    rebuilt_events: int
    #: The runs seen to finish since the previous sync, oldest first (a monitor killed between two syncs loses at
    #: most those: the next one may then take one of them for a run in flight whose completion left the ring).
    finished: list[tuple[str, str, int]] = msgspec.field(default_factory=list)
    #: As MonitorMemory.poisoned (all of it: it is bounded), and how many there ever were.
    poisoned: list[tuple[str, int]] = msgspec.field(default_factory=list)
    poisoned_total: int = 0


class HostMailbox(Message, frozen=True, kw_only=True):
    """Told back to a process monitor after each sync: its host's mailbox, where the bridge's taps queue and drop."""

    queued: int
    dropped: int
    capacity: int


class _SyncMemory(Message, frozen=True, kw_only=True):
    pass


def stamped_from_wire(
    thread_id: str, run_id: str, seq: int, observed_at: int, fan_out: int, frame: bytes
) -> StampedEvent:
    """Rebuild a tapped event in the worker from its wire form (the stamp and the frame; see ``STAMPED_WIRE_FORM``).

    :raises msgspec.DecodeError: when the frame is not an event's JSON
    """
    return StampedEvent(
        thread_id=thread_id,
        run_id=run_id,
        seq=seq,
        observed_at=observed_at,
        event=decode_event(frame),
        frame=frame,
        fan_out=fan_out,
    )


STAMPED_WIRE_FORM = WireForm(
    StampedEvent, ("thread_id", "run_id", "seq", "observed_at", "fan_out", "frame"), stamped_from_wire
)
"""A tapped event crosses to the monitor's worker as its stamp and its frame, not as its event struct too.

The frame is the event's JSON (``stamp`` makes it as ``encode_event(event)``, and it is what every client decodes):
the worker decodes the event from it. The bridge's process encodes five scalars and one bytes value per tap, where
it encoded the event's whole tree beside the same frame: about half the bytes, and less than half the instructions
(1,900 against 3,700 instructions per tap to pack and encode, callgrind).
"""

MONITOR_SCHEMA = MessageSchema(
    accepts=(
        StampedEvent,
        DeliveryProgress,
        RecordEvent,
        SetMonitoring,
        CheckHealth,
        RegisterComponent,
        UnregisterComponent,
        JudgeReport,
        ComponentReport,
        ComponentHealthChanged,
        GetAuditSummary,
        GetAlerts,
        HostMailbox,
    ),
    replies={
        CheckHealth: MonitorHealth,
        JudgeReport: AuditResult,
        GetAuditSummary: AuditSummary,
        GetAlerts: list[Anomaly],
    },
    sends=(ReplaySnapshot, AttachMonitor, Anomaly, ProbeComponent, FetchMemory, MemorySync),
    send_replies={ReplaySnapshot: list[StampedEvent], FetchMemory: MemorySnapshot},
    wire_forms=(STAMPED_WIRE_FORM,),
)
"""What crosses the boundary for a ChatEventMonitor in a worker process."""


class ProcessChatEventMonitor(ChatEventMonitor):
    """The ChatEventMonitor as it runs in a worker process.

    On (re)start it takes over the memory kept in the parent (reported anomalies, registrations, audits), rebuilds
    from the bridge's replay rings as a task monitor does, and attaches its host to the bridge's tap. Its anomalies
    go to the parent's memory keeper, which records each one before handing it to the alert dispatcher.
    """

    def __init__(self, config: MonitorConfig, *, bridge: ActorRef[Any], memory: ActorRef[Any]) -> None:
        super().__init__(config, bridge=bridge, dispatcher=memory)
        self.keeper = memory
        self._direct_unsynced = 0
        self._finished_synced = 0
        self._host: HostMailbox | None = None

    async def on_start(self) -> None:
        try:
            snapshot = await self.keeper.ask(FetchMemory(), timeout=self.config.rebuild_timeout)
        except (ActorError, TimeoutError) as exc:
            logger.warning("process monitor: no memory from the parent (%s); starting without it", exc)
        else:
            restore_memory(self.memory, snapshot)
        self._finished_synced = self.memory.finished.added
        await super().on_start()
        assert self.bridge is not None
        self.bridge.tell(AttachMonitor(monitor=self.ref))
        sync: Any = _SyncMemory()  # a timer of this subclass, outside the base monitor's message union
        self.send_every(self.config.check_interval, sync)

    async def on_stop(self, reason: Any) -> None:
        self._sync()

    async def receive(self, message: Any) -> Any:
        kind = type(message)
        if kind is _SyncMemory:
            self._sync()
            return None
        if kind is HostMailbox:
            self._host = message
            return None
        if kind is RecordEvent:
            self._direct_unsynced += 1
        reply = await super().receive(message)
        if kind is CheckHealth:
            return self._with_host(reply)
        return reply

    def _sync(self) -> None:
        memory = self.memory
        fresh = min(self._direct_unsynced, len(memory.direct))
        self._direct_unsynced = 0
        finished = memory.finished
        added = finished.added
        new_finished = finished.newest(added - self._finished_synced)
        self._finished_synced = added
        self.keeper.tell(
            MemorySync(
                last_tapped=memory.last_tapped,
                components=list(memory.components.values()),
                audits=dict(memory.audits),
                mismatch_since=dict(memory.mismatch_since),
                claims=dict(memory.claims),
                direct=list(memory.direct)[len(memory.direct) - fresh :] if fresh else [],
                suppressed=memory.suppressed,
                rebuilt_events=memory.rebuilt_events,
                finished=new_finished,
                poisoned=list(memory.poisoned),
                poisoned_total=memory.poisoned_total,
            )
        )

    def _with_host(self, health: MonitorHealth) -> MonitorHealth:
        # The bridge's taps queue (and drop) in the host's mailbox, in the parent: that is the backlog that matters.
        host = self._host
        if host is None:
            return health
        reasons = [reason for reason in health.reasons if not reason.startswith(("backlog", "tapped events dropped"))]
        backlog = health.backlog + host.queued
        drops = health.tap_drops + host.dropped
        if host.queued > host.capacity // 2:
            reasons.insert(0, f"backlog {host.queued} of {host.capacity} (in the parent)")
        if drops:
            reasons.insert(0, f"{drops} tapped events dropped by a full mailbox")
        status = "degraded" if reasons else "healthy"
        return msgspec.structs.replace(health, backlog=backlog, tap_drops=drops, reasons=tuple(reasons), status=status)


@worker_factory(MONITOR_SCHEMA)
def build_process_monitor(config: MonitorConfig, placement: MonitorPlacement) -> ProcessChatEventMonitor:
    """Build the application's monitor in a worker process (the factory of its ActorRecipe)."""
    return ProcessChatEventMonitor(config, bridge=parent_ref(placement.bridge), memory=parent_ref(placement.memory))


#: Finished runs per chunk at most when a log is seeded from a table (a sync's chunk holds what that sync brought).
_SEED_CHUNK: Final = 4096
_FINISHED_CHUNK: Final = msgspec.msgpack.Decoder(list[tuple[str, str, int]])


class FinishedRunsLog:
    """The memory's finished runs as the worker decodes them, kept in MessagePack as they come, oldest first.

    A restarting monitor inherits up to ``MonitorConfig.finished_runs`` (100,000) finished runs. Built when it asks,
    that list cost the parent's event loop a tuple per run and the garbage collections those allocations triggered
    (17 ms for 100,000 runs, 1.3 ms for 10,000, in one step), on every restart, and the bridge's deliveries waited.
    Each sync's new runs are encoded once instead, when they arrive (a few hundred a second), and a snapshot hands
    over the encoded chunks as they are. Whole chunks older than the newest ``capacity`` runs are dropped, so the
    log holds at most one chunk more than the table; the worker keeps the newest ``capacity`` (:func:`restore_memory`).

    :param capacity: the finished-runs table's capacity
    :raises ValueError: when ``capacity`` is not a positive int
    """

    __slots__ = ("_capacity", "_chunks", "_count", "_encoder")

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"FinishedRunsLog capacity must be a positive int, got {capacity!r}")
        self._capacity = capacity
        self._chunks: deque[tuple[int, msgspec.Raw]] = deque()
        self._count = 0
        self._encoder = msgspec.msgpack.Encoder()

    @classmethod
    def of(cls, table: FinishedRuns) -> FinishedRunsLog:
        """A log holding what ``table`` holds (once, when a keeper starts; the syncs keep it up to date)."""
        log = cls(table.capacity)
        entries = table.entries()
        for start in range(0, len(entries), _SEED_CHUNK):
            log.append(entries[start : start + _SEED_CHUNK])
        return log

    def __len__(self) -> int:
        return self._count

    def append(self, entries: list[tuple[str, str, int]]) -> None:
        """Add runs seen to finish after every run already in the log (a sync's ``finished``), oldest first."""
        if not entries:
            return
        self._chunks.append((len(entries), msgspec.Raw(self._encoder.encode(entries))))
        self._count += len(entries)
        chunks = self._chunks
        while self._count - chunks[0][0] >= self._capacity:
            self._count -= chunks.popleft()[0]

    def chunks(self) -> list[msgspec.Raw]:
        """The encoded chunks, oldest first (each one ``MemorySnapshot.finished`` carries unchanged)."""
        return [chunk for _, chunk in self._chunks]


def snapshot_of(memory: MonitorMemory, finished: FinishedRunsLog | None = None) -> MemorySnapshot:
    """The part of a MonitorMemory that a monitor instance in a worker process inherits.

    :param finished: the log of ``memory.finished`` that the memory keeper keeps; None encodes the table now
    """
    reported: list[Any] = list(memory.reported)
    log = finished if finished is not None else FinishedRunsLog.of(memory.finished)
    return MemorySnapshot(
        instances=memory.instances,
        reported=reported,
        alerts=list(memory.alerts),
        by_kind=dict(memory.by_kind),
        components=list(memory.components.values()),
        audits=dict(memory.audits),
        mismatch_since=dict(memory.mismatch_since),
        claims=dict(memory.claims),
        last_tapped=memory.last_tapped,
        direct=list(memory.direct),
        suppressed=memory.suppressed,
        rebuilt_events=memory.rebuilt_events,
        finished=log.chunks(),
        poisoned=list(memory.poisoned),
        poisoned_total=memory.poisoned_total,
    )


def restore_memory(memory: MonitorMemory, snapshot: MemorySnapshot) -> None:
    """Load a snapshot into a fresh MonitorMemory (in the worker, before the monitor rebuilds)."""
    reported = ReportedKeys(memory.reported.capacity)
    for key in snapshot.reported:
        reported.add(key)
    memory.reported = reported
    memory.instances = snapshot.instances
    memory.alerts.clear()
    memory.alerts.extend(snapshot.alerts)
    memory.by_kind.clear()
    memory.by_kind.update(snapshot.by_kind)
    memory.components = {component.component_id: component for component in snapshot.components}
    memory.audits = dict(snapshot.audits)
    memory.mismatch_since = dict(snapshot.mismatch_since)
    memory.claims = dict(snapshot.claims)
    memory.last_tapped = snapshot.last_tapped
    memory.direct.clear()
    memory.direct.extend(snapshot.direct)
    memory.suppressed = snapshot.suppressed
    memory.rebuilt_events = snapshot.rebuilt_events
    memory.poisoned = dict.fromkeys(snapshot.poisoned)
    memory.poisoned_total = snapshot.poisoned_total
    # Into the existing table, not a new one: the monitor's run tracker already holds a reference to it. The log may
    # hold up to a chunk more than the table did: its newest ``capacity`` runs are the table.
    finished = memory.finished
    entries = [entry for chunk in snapshot.finished for entry in _FINISHED_CHUNK.decode(chunk)]
    for thread_id, run_id, finished_at in entries[max(0, len(entries) - finished.capacity) :]:
        finished.add((thread_id, run_id), finished_at)
