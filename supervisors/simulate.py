from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from contextlib import AsyncExitStack
from functools import partial
from typing import IO, TYPE_CHECKING, Any, Final, Literal, assert_never

import anyio
import anyio.abc
import msgspec

from actors import Actor, ActorError, ActorNotFound, MailboxSpec, Message, virtual_time_backend
from actors.chat._anomaly import Anomaly, AnomalyKind
from actors.chat._health import LatencyHistogram
from actors.chat._monitor import CheckHealth
from actors.sim._agent import AgentReport, GetAgentReport, SimulatedAgent
from actors.sim._client import ClientReport, FinishClient, GetClientReport, SimulatedClient
from actors.sim._faults import FAULT_CATALOG, FaultClass, FaultSpecError, parse_duration, parse_fault
from actors.sim._plan import RuntimeFault, SimulationPlan, SimulationSpec, plan_simulation
from actors.sim._report import (
    ClientRow,
    ClientTotals,
    Criterion,
    DeliveryCounts,
    DetectionReport,
    EventCounts,
    FaultOutcome,
    HealthPoint,
    LatencyReport,
    RunCounts,
    SimulationReport,
    SupervisionCounts,
    WallClock,
    failed_criteria,
    render_summary,
)
from actors.sim._scoring import Detection, Explanation, score
from actors.sim._scripts import AgentProfile, GroundTruth

from ._config import RuntimeConfig, SupervisionSettings
from ._events import SupervisorEvent, SupervisorEventKind
from .app import BRIDGE_COMPONENT_ID, Runtime, open_runtime
from .faults import BlockLoop, Crash, Fault, FaultHistory, Hang, LyingComponent, flood, inject

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from actors import ActorRef

    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

#: The runtime clock's wall-clock anchor on the virtual clock: reports of the same seed carry the same times.
VIRTUAL_EPOCH_MS: Final = 1_767_225_600_000  # 2026-01-01T00:00:00Z
#: How many missed / false-positive entries a report lists (the counts are always complete).
_LISTED: Final = 50


# ---------------------------------------------------------------------------------------------------- settings


class SimulationSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How to run one simulation: the planned traffic and faults, the clock, and the runtime's configuration.

    :param clock: ``virtual`` (deterministic for a seed, runs as fast as the CPU allows) or ``real``
    :param sample_every: seconds between two samples of the runtime's health
    :param runtime: the application tree's configuration
    :param baseline: first run the same seed without any fault, and report the bridge's latency against it
    :param max_added_p99_ms: with ``baseline`` on the real clock: a criterion that the bridge's p99 latency exceeds
        the baseline's by at most this much
    :param min_applied: per fault name, a criterion that it took effect at least that many times
    """

    spec: SimulationSpec = msgspec.field(default_factory=SimulationSpec)
    preset: str | None = None
    clock: Literal["virtual", "real"] = "virtual"
    sample_every: float = 10.0
    runtime: RuntimeConfig = msgspec.field(default_factory=RuntimeConfig)
    baseline: bool = False
    max_added_p99_ms: float | None = None
    min_applied: dict[str, int] = msgspec.field(default_factory=dict)


class Preset(msgspec.Struct, frozen=True, kw_only=True):
    """A named simulation: its size, its faults (``--fault`` syntax), its clock and its extra criteria (see
    :class:`SimulationSettings` for ``baseline``, ``max_added_p99_ms`` and ``min_applied``)."""

    description: str
    duration: float
    threads: int
    clients: int
    faults: tuple[str, ...]
    sample_every: float
    seed: int = 1
    clock: Literal["virtual", "real"] = "virtual"
    profile: AgentProfile = msgspec.field(default_factory=AgentProfile)
    runtime: RuntimeConfig = msgspec.field(default_factory=RuntimeConfig)
    baseline: bool = False
    max_added_p99_ms: float | None = None
    min_applied: dict[str, int] = msgspec.field(default_factory=dict)


_EVERY_SCENARIO_ONCE: Final = (
    "missing_agent_started:count=2",
    "orphan_tool_completed:count=2",
    "stuck_tool:count=2",
    "stale_thread:count=2",
    "high_latency:count=2",
    "duplicate_completion:count=2",
    "event_after_completion:count=2",
    "error_burst:count=2",
)

#: The built-in presets (``--preset NAME``); ``--duration``, ``--threads``, ``--clients``, ``--seed`` override
#: their figures and each ``--fault`` is added to their faults.
PRESETS: Final[dict[str, Preset]] = {
    "demo": Preset(
        description="every fault once or more over 10 simulated minutes (what `make demo` runs; ~10 s of wall time)",
        duration=600.0,
        threads=24,
        clients=12,
        faults=(
            *_EVERY_SCENARIO_ONCE,
            "monitor_crash:count=4",
            "monitor_hang:count=1",
            "monitor_block:count=1,seconds=0.2",
            "monitor_flood:count=1",
            "lying_component:count=1",
            "slow_client:count=2",
            "client_disconnect:count=4",
            "bridge_connection_errors:count=3",
        ),
        sample_every=10.0,
    ),
    "soak": Preset(
        description="an hour of traffic on 100 threads with every fault recurring (virtual clock)",
        duration=3600.0,
        threads=100,
        clients=40,
        faults=(
            "missing_agent_started:0.3%",
            "orphan_tool_completed:0.3%",
            "stuck_tool:0.3%",
            "stale_thread:0.3%",
            "high_latency:0.3%",
            "duplicate_completion:0.3%",
            "event_after_completion:0.3%",
            "error_burst:every=600s",
            "monitor_crash:every=60s",
            "monitor_hang:every=900s",
            "monitor_block:count=2,seconds=0.1",
            "monitor_flood:every=1200s",
            "lying_component:count=2",
            "slow_client:10%",
            "client_disconnect:30%",
            "bridge_connection_errors:10%",
        ),
        sample_every=60.0,
    ),
    # Issue 7, figure 1: the monitor crashed 1,000 times while the bridge carries sustained load. Real clock: added
    # latency only exists in real time (on the virtual clock a handler takes no simulated time). The storm is as
    # fast as the monitor recovers: a crash is due every 20 ms and skipped while the previous one is still being
    # recovered from (each restart rebuilds from the replay rings, so it slows as they fill). The monitor's restart
    # budget is raised so that every crash is restarted rather than the branch detached.
    "fig1": Preset(
        description="monitor crash storm: 1,000+ monitor crashes under sustained load (real clock, ~6 min)",
        duration=150.0,
        threads=50,
        clients=25,
        faults=("monitor_crash:every=0.02s",),
        sample_every=5.0,
        clock="real",
        profile=AgentProfile(idle_mean=1.0),
        runtime=RuntimeConfig(supervision=SupervisionSettings(monitor_intensity=10_000, monitor_period=10.0)),
        baseline=True,
        max_added_p99_ms=2.0,
        min_applied={"monitor_crash": 1000},
    ),
}


def preset_settings(
    name: str, *, clock: Literal["virtual", "real"] | None = None, **overrides: Any
) -> SimulationSettings:
    """The settings of a preset, with ``duration``, ``threads``, ``clients``, ``seed`` or extra ``faults`` (specs)
    overridden (``clock``: the preset's own by default).

    :raises KeyError: when there is no such preset
    :raises FaultSpecError: when a fault spec is invalid
    """
    preset = PRESETS[name]
    faults = tuple(parse_fault(text) for text in (*preset.faults, *overrides.pop("faults", ())))
    spec = SimulationSpec(
        seed=overrides.pop("seed", preset.seed),
        duration=overrides.pop("duration", preset.duration),
        threads=overrides.pop("threads", preset.threads),
        clients=overrides.pop("clients", preset.clients),
        faults=faults,
        profile=preset.profile,
    )
    if overrides:
        raise TypeError(f"unknown overrides: {', '.join(overrides)}")
    return SimulationSettings(
        spec=spec,
        preset=name,
        clock=clock if clock is not None else preset.clock,
        sample_every=preset.sample_every,
        runtime=preset.runtime,
        baseline=preset.baseline,
        max_added_p99_ms=preset.max_added_p99_ms,
        min_applied=dict(preset.min_applied),
    )


# ---------------------------------------------------------------------------------------------------- supervision


class _GetTally(Message, frozen=True, kw_only=True):
    pass


class SupervisionTally(Actor[SupervisorEvent | _GetTally]):
    """Counts every supervision event of the tree, per child and kind (the stream's own history is bounded)."""

    def __init__(self) -> None:
        self.by_child: dict[str, dict[str, int]] = {}
        self.handler_timeouts = 0

    async def receive(self, message: SupervisorEvent | _GetTally) -> dict[str, Any] | None:
        match message:
            case SupervisorEvent():
                child = message.supervisor if message.child_id is None else f"{message.supervisor}/{message.child_id}"
                counts = self.by_child.setdefault(child, {})
                counts[message.kind.value] = counts.get(message.kind.value, 0) + 1
                if message.kind is SupervisorEventKind.FAILED and "deadline" in message.reason:
                    self.handler_timeouts += 1
                return None
            case _GetTally():
                by_child = {child: dict(sorted(counts.items())) for child, counts in sorted(self.by_child.items())}
                return {"by_child": by_child, "handler_timeouts": self.handler_timeouts}
            case _:
                assert_never(message)


# ---------------------------------------------------------------------------------------------------- the driver


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    """A progress snapshot, once per simulated second."""

    at_s: float
    duration_s: float
    phase: str
    accepted: int
    anomalies: int
    monitoring: str


class _Run:
    """The state of one simulation while it runs (what a partial report is built from)."""

    def __init__(self, settings: SimulationSettings, plan: SimulationPlan) -> None:
        self.settings = settings
        self.plan = plan
        self.alerts: list[Anomaly] = []
        self.history = FaultHistory()
        self.health: list[HealthPoint] = []
        self.explanations: list[Explanation] = []
        self.truth: list[GroundTruth] = []  # ground truth injected by the driver (runtime faults)
        self.outcomes: dict[str, list[str]] = {}
        self.loop_blocked = 0.0
        self.start = 0.0
        self.start_ms = 0
        self.faults_running = 0
        # A monitor crash, hang or block still waiting to take effect: the next one is skipped, not stacked (a
        # monitor that is restarting cannot be crashed again).
        self.monitor_fault_pending = False
        self.interrupted = False
        self.phase = "starting"

    def outcome(self, fault: RuntimeFault, detail: str) -> None:
        self.outcomes.setdefault(fault.name, []).append(detail)


async def simulate(
    settings: SimulationSettings,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    interrupt: anyio.Event | None = None,
) -> SimulationReport:
    """Run one simulation on the current event loop and report it.

    On the virtual clock run it under ``virtual_time_backend(...)`` (the CLI does); the runtime clock is then
    anchored at :data:`VIRTUAL_EPOCH_MS` and the report is a function of the settings (except its ``wall`` part).
    With ``settings.baseline``, the same seed first runs without any fault, and the report carries its latency.

    :param on_progress: called once per simulated second
    :param interrupt: when set, the traffic stops and a partial report (``interrupted``) is built at once
    :raises FaultSpecError: when a fault's schedule does not fit the traffic
    """
    baseline: LatencyReport | None = None
    if settings.baseline:
        calm = msgspec.structs.replace(
            settings,
            spec=msgspec.structs.replace(settings.spec, faults=()),
            baseline=False,
            max_added_p99_ms=None,
            min_applied={},
        )
        calm_report = await _simulate_once(calm, on_progress=on_progress, interrupt=interrupt)
        if calm_report.interrupted:
            return calm_report
        baseline = calm_report.latency
    report = await _simulate_once(settings, on_progress=on_progress, interrupt=interrupt)
    extra = list(_preset_criteria(settings, report, baseline))
    if baseline is None and not extra:
        return report
    criteria = (*report.criteria, *extra)
    return msgspec.structs.replace(
        report,
        criteria=criteria,
        passed=not failed_criteria(criteria) and not report.interrupted,
        baseline_latency=baseline,
    )


def _preset_criteria(
    settings: SimulationSettings, report: SimulationReport, baseline: LatencyReport | None
) -> list[Criterion]:
    criteria = []
    applied = {fault.name: 0 for fault in report.faults}
    for fault in report.faults:
        applied[fault.name] += fault.applied
    for name, least in sorted(settings.min_applied.items()):
        criteria.append(
            Criterion(
                name=f"faults.{name}.applied",
                passed=applied.get(name, 0) >= least,
                detail=f"{applied.get(name, 0):,} applied (at least {least:,} wanted)",
            )
        )
    limit = settings.max_added_p99_ms
    if limit is not None and baseline is not None and settings.clock == "real":
        ours, theirs = report.latency.bridge_p99_ms, baseline.bridge_p99_ms
        added = None if ours is None or theirs is None else ours - theirs
        criteria.append(
            Criterion(
                name="latency.added_p99",
                passed=added is not None and added <= limit,
                detail=f"bridge p99 {_ms_text(ours)} vs {_ms_text(theirs)} without faults (same seed): "
                f"{_ms_text(added)} added, at most {limit:g} ms allowed",
            )
        )
    return criteria


def _ms_text(value: float | None) -> str:
    return "-" if value is None else f"{value:g} ms"


async def _simulate_once(
    settings: SimulationSettings,
    *,
    on_progress: Callable[[Progress], None] | None,
    interrupt: anyio.Event | None,
) -> SimulationReport:
    plan = plan_simulation(settings.spec)
    run = _Run(settings, plan)
    wall_start = time.perf_counter()
    lying = any(fault.name == "lying_component" for fault in plan.runtime_faults)
    config = settings.runtime
    epoch = VIRTUAL_EPOCH_MS if settings.clock == "virtual" else None
    async with (
        open_runtime(config, sinks=[run.alerts.append], epoch_ms=epoch, register_bridge=not lying) as runtime,
        AsyncExitStack() as stack,
    ):
        system = runtime.system
        tally = system.spawn(SupervisionTally, name="sim/supervision")
        runtime.events.subscribe(tally)
        liar: LyingComponent | None = None
        if lying:
            # Registered in the bridge's place: honest (a pass-through) except while the fault is on.
            liar = LyingComponent(runtime.bridge, history=run.history, target=BRIDGE_COMPONENT_ID)
            liar.lying = False
            await runtime.monitor.register_component_for_monitoring(BRIDGE_COMPONENT_ID, liar, observes_flow=True)
        watchdog = None
        if settings.clock == "real" and any(fault.name == "monitor_block" for fault in plan.runtime_faults):
            from ._watchdog import open_loop_watchdog

            watchdog = await stack.enter_async_context(open_loop_watchdog(system, threshold=0.1, interval=0.02))
        run.start = start = anyio.current_time()
        run.start_ms = system.clock.now_ms()
        # Clients are connected and subscribed before the first event, so every event is owed to a follower.
        clients = [
            await system.start(
                partial(SimulatedClient, client, runtime.bridge, start),
                name=f"sim/{client.client_id}",
                mailbox=MailboxSpec(capacity=4096),
            )
            for client in plan.clients
        ]
        agents = [
            system.spawn(
                partial(SimulatedAgent, agent_id, runtime.bridge, [(t, plan.script(t)) for t in threads], start),
                name=f"sim/{agent_id}",
            )
            for agent_id, threads in plan.agent_groups()
        ]
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_sample_health, run, runtime)
            if on_progress is not None:
                tasks.start_soon(_report_progress, run, runtime, on_progress)
            with anyio.CancelScope() as traffic:
                if interrupt is not None:
                    tasks.start_soon(_cancel_on, interrupt, traffic, run)
                for fault in plan.runtime_faults:
                    tasks.start_soon(_apply_at, run, runtime, fault, liar)
                await _traffic(run, runtime, agents, clients)
            tasks.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            for client in clients:
                client.tell(FinishClient())
            report = await _collect(run, runtime, agents, clients, tally, wall_start, watchdog)
    return report


async def _cancel_on(event: anyio.Event, scope: anyio.CancelScope, run: _Run) -> None:
    await event.wait()
    run.interrupted = True
    scope.cancel()


async def _traffic(
    run: _Run, runtime: Runtime, agents: Sequence[ActorRef[Any]], clients: Sequence[ActorRef[Any]]
) -> None:
    """Let the traffic run, then its tail, then the detection deadlines, then drain delivery."""
    settings = run.settings
    spec = settings.spec
    run.phase = "traffic"
    await anyio.sleep_until(run.start + spec.duration)
    # The last runs finish (a stuck tool's run streams past its threshold first): wait until every script is done.
    run.phase = "finishing runs"
    while True:
        reports = [await agent.ask(GetAgentReport()) for agent in agents]
        if all(report.remaining == 0 for report in reports) and run.faults_running == 0:
            break
        await anyio.sleep(1.0)
    truth = [entry for report in reports for entry in report.truth] + run.truth
    monitor = settings.runtime.monitor
    supervision = settings.runtime.supervision
    margin = 2 * monitor.check_interval + 1.0
    if any(fault.name == "monitor_hang" for fault in run.plan.runtime_faults):
        margin += supervision.monitor_handler_timeout
    if any(fault.name == "lying_component" for fault in run.plan.runtime_faults):
        margin += 2 * monitor.audit_interval
    last_due = max((entry.due_at for entry in truth), default=0)
    run.phase = "detecting"
    clock = runtime.system.clock
    await anyio.sleep_until(clock.from_ms(last_due) + margin)
    # Every client reconnected and caught up: nothing queued or held back, every thread received to its last seq.
    run.phase = "draining"
    produced: dict[str, int] = {}
    for report in reports:
        produced.update(report.produced)
    deadline = anyio.current_time() + 120.0
    while anyio.current_time() < deadline:
        metrics = await runtime.bridge.get_metrics()
        client_reports = [await client.ask(GetClientReport()) for client in clients]
        if (
            metrics.queued == 0
            and metrics.deferred_pending == 0
            and all(_caught_up(report, produced) for report in client_reports)
        ):
            break
        await anyio.sleep(0.5)
    run.phase = "done"


def _caught_up(report: ClientReport, produced: dict[str, int]) -> bool:
    return report.connected and all(
        receipts.last_seq >= produced.get(receipts.thread_id, 0) for receipts in report.threads
    )


#: Samples are taken this long after each multiple of ``sample_every``: off the grid of the runtime's own ticks, so
#: that what a sample sees never depends on the order of same-instant events (which differs between event loops).
_SAMPLE_OFFSET: Final = 0.0503


async def _sample_health(run: _Run, runtime: Runtime) -> None:
    every = run.settings.sample_every
    tick = run.start + _SAMPLE_OFFSET
    while True:
        tick += every
        await anyio.sleep_until(tick)
        try:
            health = await runtime.bridge.get_health_status()
            metrics = await runtime.bridge.get_metrics()
        except (ActorError, TimeoutError):
            run.health.append(
                HealthPoint(
                    at_s=round(tick - run.start - _SAMPLE_OFFSET, 3),
                    bridge="unavailable",
                    checks=(),
                    monitoring=runtime.monitoring_state(),
                    accepted=0,
                    delivered=0,
                )
            )
            continue
        run.health.append(
            HealthPoint(
                at_s=round(tick - run.start - _SAMPLE_OFFSET, 3),
                bridge=health.status.value,
                checks=tuple(sorted({reason.check for reason in health.reasons})),
                monitoring=runtime.monitoring_state(),
                accepted=metrics.events_accepted,
                delivered=metrics.events_delivered,
            )
        )


async def _report_progress(run: _Run, runtime: Runtime, on_progress: Callable[[Progress], None]) -> None:
    tick = run.start
    while True:
        tick += 1.0
        await anyio.sleep_until(tick)
        try:
            accepted = (await runtime.bridge.get_metrics()).events_accepted
        except (ActorError, TimeoutError):
            accepted = -1
        on_progress(
            Progress(
                at_s=tick - run.start,
                duration_s=run.settings.spec.duration,
                phase=run.phase,
                accepted=accepted,
                anomalies=len(run.alerts),
                monitoring=runtime.monitoring_state(),
            )
        )


# ---------------------------------------------------------------------------------------------------- runtime faults


async def _apply_at(run: _Run, runtime: Runtime, fault: RuntimeFault, liar: LyingComponent | None) -> None:
    await anyio.sleep_until(run.start + fault.at)
    run.faults_running += 1
    try:
        await _apply(run, runtime, fault, liar)
    finally:
        run.faults_running -= 1


async def _apply(run: _Run, runtime: Runtime, fault: RuntimeFault, liar: LyingComponent | None) -> None:
    if fault.name == "lying_component":
        assert liar is not None
        await _lie(run, runtime, fault, liar)
        return
    monitor = runtime.monitor_ref()
    if monitor is None or runtime.monitoring_state() != "running":
        run.outcome(fault, f"skipped: monitoring is {runtime.monitoring_state()}")
        return
    if run.monitor_fault_pending:
        run.outcome(fault, "skipped: the monitor was still recovering from the previous fault")
        return
    run.monitor_fault_pending = True
    try:
        await _apply_to_monitor(run, runtime, fault, monitor)
    finally:
        run.monitor_fault_pending = False


async def _apply_to_monitor(run: _Run, runtime: Runtime, fault: RuntimeFault, monitor: ActorRef[Any]) -> None:
    system = runtime.system
    history = run.history
    supervision = run.settings.runtime.supervision
    name = fault.name
    if name == "monitor_crash":
        restarts = monitor.statistics().restarts
        async with inject(system, monitor, Crash(), history=history) as crash:
            assert isinstance(crash, Crash)
            await _wait_for(lambda: crash.crashes >= 1 and monitor.statistics().restarts > restarts, 10.0)
        run.outcome(
            fault, "crashed the monitor" if crash.crashes else "skipped: no message reached the monitor in 10 s"
        )
    elif name == "monitor_hang":
        restarts = monitor.statistics().restarts
        async with inject(system, monitor, Hang(), history=history) as hang:
            assert isinstance(hang, Hang)
            # The hung handler is cancelled at the monitor's handler deadline and the monitor restarted.
            await _wait_for(
                lambda: hang.hangs >= 1 and monitor.statistics().restarts > restarts,
                supervision.monitor_handler_timeout + 10.0,
            )
        run.outcome(fault, "hung the monitor" if hang.hangs else "skipped: no message reached the monitor in time")
    elif name == "monitor_block":
        assert fault.seconds is not None
        async with inject(system, monitor, BlockLoop(fault.seconds), history=history) as block:
            assert isinstance(block, BlockLoop)
            await _wait_for(lambda: block.blocks >= 1, 10.0)
        run.loop_blocked += fault.seconds * block.blocks
        run.outcome(
            fault, f"blocked the loop for {fault.seconds:g} s" if block.blocks else "skipped: no message arrived"
        )
    elif name == "monitor_flood":
        assert fault.messages is not None
        dropped = flood(monitor, lambda _: CheckHealth(), fault.messages, history=history)
        run.outcome(fault, f"{fault.messages:,} health queries, {dropped:,} dropped by the full mailbox")
    else:
        raise AssertionError(f"not a runtime fault: {name}")


class _WritersDown(Fault):
    """Holds every handler of the connection writers it is injected into until :meth:`restore`: the bridge takes
    events and routes them, and delivers none (its writers are stuck), while clients keep reading. Restored, the
    writers carry on from where they stopped (the held messages are handled, nothing is lost)."""

    name = "writers_down"

    def __init__(self) -> None:
        super().__init__()
        self._restored = anyio.Event()
        self.held = 0

    def restore(self) -> None:
        """Let every held handler, and every later one, through."""
        self._restored.set()

    async def around(self, receive: Callable[[Any], Awaitable[Any]], message: Any) -> Any:
        if not self._restored.is_set():
            self.held += 1
            self._triggered(f"held {type(message).__name__}")
            await self._restored.wait()
        return await receive(message)


async def _lie(run: _Run, runtime: Runtime, fault: RuntimeFault, liar: LyingComponent) -> None:
    """The bridge really fails (its connection writers are stuck: nothing is delivered) while its registration
    claims healthy; the monitor's audit must see through the claim."""
    assert fault.duration is not None
    system = runtime.system
    monitor = run.settings.runtime.monitor
    thresholds = monitor.thresholds
    began = system.clock.now_ms()
    down = _WritersDown()
    writers = 0
    liar.lying = True
    async with AsyncExitStack() as stack:
        for connection in await runtime.bridge.connection_statistics():
            try:
                writer = system.lookup(f"{runtime.bridge.ref.name}/{connection.connection_id}")
            except ActorNotFound:
                continue  # closed meanwhile
            await stack.enter_async_context(inject(system, writer, down, history=run.history))
            writers += 1
        await anyio.sleep(fault.duration)
        down.restore()
    liar.lying = False
    ended = system.clock.now_ms()
    # Provable once a routed event is overdue: the next audit then sees a "healthy" claim over a dead flow.
    run.truth.append(
        GroundTruth(
            kind=AnomalyKind.HEALTH_CLAIM_MISMATCH.value,
            thread_id=f"component:{BRIDGE_COMPONENT_ID}",
            run_id=None,
            tool_call_id=None,
            due_at=began + round(thresholds.undelivered_after * 1000),
            fault="lying_component",
        )
    )
    # Nothing is delivered meanwhile, so routed events really are undelivered: side effects, not false positives.
    settle = round((thresholds.undelivered_after + 2 * monitor.check_interval + 1.0) * 1000)
    run.explanations.append(
        Explanation(kind=AnomalyKind.UNDELIVERED_EVENT.value, fault="lying_component", start=began, end=ended + settle)
    )
    run.outcome(fault, f"claimed healthy for {fault.duration:g} s while {writers} connection writers were stuck")


async def _wait_for(condition: Callable[[], bool], timeout: float) -> None:
    # Polled: the conditions are other actors' counters, which signal nothing when they change.
    with anyio.move_on_after(timeout):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.01)


# ---------------------------------------------------------------------------------------------------- the report


async def _ask_all(refs: Sequence[ActorRef[Any]], message: Any) -> list[Any]:
    replies = []
    for ref in refs:
        try:
            replies.append(await ref.ask(message, timeout=10.0))
        except (ActorError, TimeoutError):
            continue
    return replies


async def _collect(
    run: _Run,
    runtime: Runtime,
    agents: Sequence[ActorRef[Any]],
    clients: Sequence[ActorRef[Any]],
    tally: ActorRef[Any],
    wall_start: float,
    watchdog: Any,
) -> SimulationReport:
    settings = run.settings
    spec = settings.spec
    plan = run.plan
    now_ms = runtime.system.clock.now_ms()
    simulated = round(anyio.current_time() - run.start, 3)
    agent_reports: list[AgentReport] = await _ask_all(agents, GetAgentReport())
    client_reports: list[ClientReport] = await _ask_all(clients, GetClientReport())
    metrics = await runtime.bridge.get_metrics()
    supervision = await tally.ask(_GetTally())
    reported = sum(runtime.memory.by_kind.values())
    produced: dict[str, int] = {}
    for agent in agent_reports:
        produced.update(agent.produced)
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
    events = EventCounts(
        produced=total_produced,
        accepted=metrics.events_accepted,
        rejected=rejected,
        routed=metrics.events_routed,
        unrouted=metrics.events_unrouted,
        conserved=total_produced == metrics.events_accepted + sum(rejected.values()),
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
    client_totals, client_latency = _client_totals(client_reports, produced)
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
    monitoring = runtime.monitoring_state()
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
            loop_blocks=None if watchdog is None else watchdog.blocks,
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


def _client_explanations(run: _Run) -> list[Explanation]:
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


def _client_totals(reports: Sequence[ClientReport], produced: dict[str, int]) -> tuple[ClientTotals, LatencyHistogram]:
    latency = LatencyHistogram()
    rows = []
    complete = 0
    for report in reports:
        incomplete = tuple(
            f"{receipts.thread_id}: {receipts.last_seq}/{produced.get(receipts.thread_id, 0)}"
            for receipts in report.threads
            if receipts.last_seq < produced.get(receipts.thread_id, 0)
        )
        if report.connected and not incomplete and len(report.threads) > 0:
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
                incomplete=incomplete if report.connected else ("disconnected at the end", *incomplete),
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
    run: _Run, agents: Sequence[AgentReport], clients: Sequence[ClientReport], truth: Sequence[GroundTruth]
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
            details = run.outcomes.get(fault.name, [])
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
    run: _Run,
    *,
    scoring_kinds: Sequence[Any],
    false_positives: Sequence[Detection],
    events: EventCounts,
    deliveries: DeliveryCounts,
    clients: ClientTotals,
    supervision: SupervisionCounts,
    detection: DetectionReport,
    monitoring: str,
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
            detail=f"produced {events.produced:,} == accepted {events.accepted:,} + rejected {rejected:,}",
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
    criteria.append(
        Criterion(
            name="clients.receipts_match_bridge",
            passed=receipts_match,
            detail=f"clients received {clients.frames:,} frames covering {clients.events:,} events; the bridge sent "
            f"{deliveries.delivered:,} frames covering {deliveries.delivered + deliveries.coalesced:,}",
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


# ---------------------------------------------------------------------------------------------------- the CLI


def add_parser(subparsers: _Subparsers) -> None:
    """Register ``agentwatch simulate`` (sets ``handler`` to :func:`run`)."""
    parser = subparsers.add_parser(
        "simulate",
        help="drive simulated agents and clients through the real runtime, inject faults, score detection",
        description="Drive simulated agent runs and chat clients through the real bridge, monitor and supervisors, "
        "inject faults, and report what was delivered and what was detected against ground truth. "
        "Docs: docs/simulation.md.",
        epilog="exit status: 0 every criterion holds, 1 a criterion failed (named on stderr), 2 usage error, "
        "130 interrupted (a partial report is written first). Fault syntax: NAME[:ARG,...], ARG one of P%, "
        "count=N, every=DUR, at=DUR, or an option (duration=, delay=, seconds=, messages=). Faults: "
        + ", ".join(FAULT_CATALOG),
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a built-in simulation (see docs/simulation.md)")
    parser.add_argument("--duration", type=_duration, metavar="DUR", help="traffic, in simulated seconds (or 10m)")
    parser.add_argument("--threads", type=_count, metavar="N", help="chat threads carrying agent runs")
    parser.add_argument("--clients", type=_count, metavar="N", help="simulated clients (0 allowed)")
    parser.add_argument("--seed", type=int, metavar="N", help="the seed (same seed, same report on the virtual clock)")
    parser.add_argument(
        "--fault", action="append", default=[], metavar="SPEC", help="add a fault, e.g. stuck_tool:2%% (repeatable)"
    )
    parser.add_argument(
        "--clock", choices=("virtual", "real"), help="default: virtual (the fig presets: real, see docs/simulation.md)"
    )
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio", help="default: asyncio")
    parser.add_argument(
        "--monitor-isolation",
        choices=("task", "process"),
        help="run the monitor as an actor in this loop (task, the default) or in a child process (needs --clock real)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    parser.add_argument("--report", metavar="FILE", help="also write the JSON report to FILE")
    parser.set_defaults(handler=run)


def _duration(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def settings_from_args(args: argparse.Namespace) -> SimulationSettings:
    """Build the settings a command line asks for.

    :raises FaultSpecError: for a bad ``--fault`` (or a schedule that does not fit the traffic)
    :raises ValueError: for figures out of range
    """
    overrides: dict[str, Any] = {
        name: getattr(args, name)
        for name in ("duration", "threads", "clients", "seed")
        if getattr(args, name) is not None
    }
    if args.preset is not None:
        settings = preset_settings(args.preset, clock=args.clock, faults=tuple(args.fault), **overrides)
    else:
        spec = SimulationSpec(faults=tuple(parse_fault(text) for text in args.fault), **overrides)
        settings = SimulationSettings(spec=spec, clock=args.clock or "virtual")
    isolation = getattr(args, "monitor_isolation", None)
    if isolation is not None:
        if isolation == "process" and settings.clock != "real":
            raise ValueError(
                "--monitor-isolation process needs --clock real (a virtual clock does not cross process boundaries)"
            )
        settings = msgspec.structs.replace(
            settings, runtime=msgspec.structs.replace(settings.runtime, monitor_isolation=isolation)
        )
    plan_simulation(settings.spec)  # validates every schedule against the traffic before anything runs
    return settings


class _ProgressLine:
    """The live progress line on stderr (only on a terminal): rewritten in place, at most 5 times a second."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._last = 0.0
        self.shown = False

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self._last < 0.2:
            return
        self._last = now
        self.shown = True
        self._stream.write(
            f"\r  {progress.phase}: {progress.at_s:,.0f}/{progress.duration_s:,.0f} s simulated, "
            f"{progress.accepted:,} events, {progress.anomalies} anomalies, monitoring {progress.monitoring}   "
        )
        self._stream.flush()

    def clear(self) -> None:
        if self.shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


def run(args: argparse.Namespace) -> int:
    """Run ``agentwatch simulate`` as parsed from the command line; return the exit code."""
    try:
        settings = settings_from_args(args)
    except (FaultSpecError, ValueError, TypeError) as exc:
        print(f"agentwatch simulate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    backend: str = args.backend
    options: dict[str, Any] = {}
    if settings.clock == "virtual":
        backend, options = virtual_time_backend(backend)
    elif backend == "trio":
        try:
            import trio  # noqa: F401  # only to fail early, with a usage error, when it is missing
        except ImportError:
            print("agentwatch simulate: error: --backend trio needs trio installed", file=sys.stderr)
            return EXIT_USAGE
    report_file: IO[bytes] | None = None
    if args.report is not None:
        try:
            report_file = open(args.report, "wb")  # noqa: SIM115  # closed below, after the run
        except OSError as exc:
            print(f"agentwatch simulate: error: --report {args.report}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
    progress = _ProgressLine(sys.stderr) if sys.stderr.isatty() else None

    async def main() -> SimulationReport:
        interrupt = anyio.Event()
        async with anyio.create_task_group() as tasks:
            await tasks.start(_watch_sigint, interrupt)
            spec = settings.spec
            print(
                f"agentwatch simulate: {spec.duration:g} s of traffic on {spec.threads} threads, {spec.clients} "
                f"client{'' if spec.clients == 1 else 's'}, seed {spec.seed}, {settings.clock} clock ({args.backend})"
                + ("; first without faults, as the baseline" if settings.baseline else "")
                + "; "
                "Ctrl-C stops it and writes a partial report",
                file=sys.stderr,
                flush=True,
            )
            report = await simulate(settings, on_progress=progress, interrupt=interrupt)
            tasks.cancel_scope.cancel()
        return report

    try:
        try:
            report = anyio.run(main, backend=backend, backend_options=options)
        except KeyboardInterrupt:
            # A second Ctrl-C, or one before the handler was installed: nothing is left to report on.
            if progress is not None:
                progress.clear()
            print("agentwatch simulate: interrupted before a report could be made", file=sys.stderr)
            return EXIT_INTERRUPTED
        if progress is not None:
            progress.clear()
        encoded = msgspec.json.encode(report)
        if report_file is not None:
            report_file.write(encoded + b"\n")
        if args.json:
            sys.stdout.write(encoded.decode() + "\n")
        else:
            color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
            sys.stdout.write(render_summary(report, color=color) + "\n")
    finally:
        if report_file is not None:
            report_file.close()
    if report.interrupted:
        print("agentwatch simulate: interrupted; the report is partial", file=sys.stderr)
        return EXIT_INTERRUPTED
    failed = failed_criteria(report.criteria)
    for criterion in failed:
        print(f"agentwatch simulate: FAILED {criterion.name}: {criterion.detail}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


async def _watch_sigint(
    interrupt: anyio.Event, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    # The first Ctrl-C stops the traffic and lets the partial report be written; the receiver closes after it,
    # so a second Ctrl-C interrupts for real.
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        task_status.started()
        async for _ in signals:
            interrupt.set()
            return


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``simulate`` on its own (``python -m supervisors.simulate ...``), until the CLI registers it."""
    parser = argparse.ArgumentParser(prog="agentwatch")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_parser(commands)
    try:
        args = parser.parse_args(["simulate", *(sys.argv[1:] if argv is None else argv)])
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    status: int = args.handler(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
