from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, assert_never

import msgspec

from actors import Actor, Message

from ._events import SupervisorEvent, SupervisorEventKind
from .faults import FaultHistory

if TYPE_CHECKING:
    from actors import ActorStatistics
    from actors.chat._anomaly import Anomaly
    from actors.sim._plan import RuntimeFault, SimulationPlan
    from actors.sim._report import HealthPoint
    from actors.sim._scoring import Explanation
    from actors.sim._scripts import GroundTruth

    from ._sim_presets import SimulationSettings


class TimelineEntry(msgspec.Struct, frozen=True):
    """One supervision event kept in order: ``(at, kind, supervisor, child_id, reason)``, ``at`` in loop seconds."""

    at: float
    kind: str
    supervisor: str
    child_id: str | None
    reason: str


#: Supervision events kept in order (the counts are always complete); a figure-1 storm makes about 3,000.
_TIMELINE_KEPT: Final = 200_000


class GetTally(Message, frozen=True, kw_only=True):
    """Ask a :class:`SupervisionTally` for its counts and timeline (a dict)."""


class SupervisionTally(Actor[SupervisorEvent | GetTally]):
    """Counts every supervision event of the tree, per child and kind, and keeps them in order (the stream's own
    history is bounded)."""

    def __init__(self) -> None:
        self.by_child: dict[str, dict[str, int]] = {}
        self.handler_timeouts = 0
        self.timeline: list[TimelineEntry] = []

    async def receive(self, message: SupervisorEvent | GetTally) -> dict[str, Any] | None:
        match message:
            case SupervisorEvent():
                child = message.supervisor if message.child_id is None else f"{message.supervisor}/{message.child_id}"
                counts = self.by_child.setdefault(child, {})
                counts[message.kind.value] = counts.get(message.kind.value, 0) + 1
                if message.kind is SupervisorEventKind.FAILED and "deadline" in message.reason:
                    self.handler_timeouts += 1
                if message.kind is not SupervisorEventKind.STARTED and len(self.timeline) < _TIMELINE_KEPT:
                    self.timeline.append(
                        TimelineEntry(
                            message.at, message.kind.value, message.supervisor, message.child_id, message.reason
                        )
                    )
                return None
            case GetTally():
                by_child = {child: dict(sorted(counts.items())) for child, counts in sorted(self.by_child.items())}
                return {
                    "by_child": by_child,
                    "handler_timeouts": self.handler_timeouts,
                    "timeline": list(self.timeline),
                }
            case _:
                assert_never(message)


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    """A progress snapshot, once per simulated second."""

    at_s: float
    duration_s: float
    phase: str
    accepted: int
    anomalies: int
    monitoring: str


class ReadinessSample(msgspec.Struct, frozen=True):
    """The runtime's own health at one instant (figure 2): ``at`` in seconds after the start."""

    at: float
    monitoring: str
    ready: bool
    status: str


class SimulationRun:
    """The state of one simulation while it runs (what a partial report, and the figures' criteria, are built
    from)."""

    def __init__(self, settings: SimulationSettings, plan: SimulationPlan) -> None:
        self.settings = settings
        self.plan = plan
        self.alerts: list[Anomaly] = []
        self.history = FaultHistory()
        self.health: list[HealthPoint] = []
        self.explanations: list[Explanation] = []
        self.truth: list[GroundTruth] = []  # ground truth injected by the driver (runtime faults)
        self.outcomes: dict[str, list[str]] = {}  # by fault name
        self.outcomes_by_spec: dict[str, list[str]] = {}  # by --fault text (two specs may name one fault)
        self.loop_blocked = 0.0
        self.start = 0.0
        self.start_ms = 0
        self.faults_running = 0
        # A monitor crash, hang or block still waiting to take effect: the next one is skipped, not stacked (a
        # monitor that is restarting cannot be crashed again).
        self.monitor_fault_pending = False
        self.interrupted = False
        self.phase = "starting"
        #: Runtime-clock ms at which each monitor crash took effect (figure 5).
        self.crash_times: list[int] = []
        #: Runtime-clock ms at which each lie began (figure 7).
        self.lie_onsets: list[int] = []
        #: Malformed frames fed, those rejected clearly, by the replay, and the bogus publishes (figure 8).
        self.malformed: dict[str, int] = {}
        self.unclear: list[str] = []
        #: The runtime's health while monitoring was not running, and how many samples were taken (figure 2).
        self.readiness: list[ReadinessSample] = []
        self.readiness_samples = 0
        #: The monitor's mailbox sampled every 10 ms: samples, deepest queue, problems found (figure 4).
        self.mailbox_samples = 0
        self.mailbox_deepest = 0
        self.mailbox_problems: list[str] = []
        #: The monitor's statistics once the run is over and its mailbox drained (figure 4).
        self.monitor_final: ActorStatistics | None = None
        #: Lifecycle events (thread, seq) the monitor's handler received (figure 4).
        self.lifecycle_seen: set[tuple[str, int]] = set()

    def outcome(self, fault: RuntimeFault, detail: str) -> None:
        """Record what one occurrence of a runtime fault did (``skipped: ...`` when it did nothing)."""
        self.outcomes.setdefault(fault.name, []).append(detail)
        self.outcomes_by_spec.setdefault(fault.spec, []).append(detail)
