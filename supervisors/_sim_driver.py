from __future__ import annotations

import time
from contextlib import AsyncExitStack
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec

from actors import ActorError, MailboxSpec, open_actor_system, virtual_time_backend
from actors.sim._agent import GetAgentReport, SimulatedAgent
from actors.sim._client import ClientReport, FinishClient, GetClientReport, SimulatedClient
from actors.sim._plan import plan_simulation
from actors.sim._report import HealthPoint, SimulationReport, failed_criteria

from ._sim_collect import ask_all, build_report, observe
from ._sim_faults import apply_at
from ._sim_figures import (
    LifecycleSeen,
    RunFacts,
    ShutdownFacts,
    baseline_criteria,
    determinism_criteria,
    run_criteria,
    sample_monitor_mailbox,
    sample_readiness,
)
from ._sim_presets import FigureChecks, SimulationSettings
from ._sim_run import GetTally, Progress, SimulationRun, SupervisionTally
from .app import BRIDGE_COMPONENT_ID, open_runtime
from .faults import LyingComponent, Slow, inject

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from actors import ActorRef

    from .app import Runtime

#: The runtime clock's wall-clock anchor on the virtual clock: reports of the same seed carry the same times.
VIRTUAL_EPOCH_MS: Final = 1_767_225_600_000  # 2026-01-01T00:00:00Z


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
    (``settings.checks.compare_backends`` needs two event loops: see :func:`simulate_on_both_backends`.)

    :param on_progress: called once per simulated second
    :param interrupt: when set, the traffic stops and a partial report (``interrupted``) is built at once
    :raises FaultSpecError: when a fault's schedule does not fit the traffic
    """
    report, _ = await simulate_with_facts(settings, on_progress=on_progress, interrupt=interrupt)
    return report


async def simulate_with_facts(
    settings: SimulationSettings,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    interrupt: anyio.Event | None = None,
) -> tuple[SimulationReport, RunFacts]:
    """:func:`simulate`, also returning what two runs are compared on (every client's receipts, the alerts)."""
    baseline: RunFacts | None = None
    if settings.baseline:
        calm = msgspec.structs.replace(
            settings,
            spec=msgspec.structs.replace(settings.spec, faults=()),
            baseline=False,
            max_added_p99_ms=None,
            min_applied={},
            checks=FigureChecks(),
        )
        baseline = await _simulate_once(calm, on_progress=on_progress, interrupt=interrupt)
        if baseline.report.interrupted:
            return baseline.report, baseline
    facts = await _simulate_once(settings, on_progress=on_progress, interrupt=interrupt)
    if baseline is None:
        return facts.report, facts
    report = facts.report
    criteria = (*report.criteria, *baseline_criteria(settings, facts, baseline))
    facts.report = msgspec.structs.replace(
        report,
        criteria=criteria,
        passed=not failed_criteria(criteria) and not report.interrupted,
        baseline_latency=baseline.report.latency,
    )
    return facts.report, facts


async def _simulate_once(
    settings: SimulationSettings,
    *,
    on_progress: Callable[[Progress], None] | None,
    interrupt: anyio.Event | None,
) -> RunFacts:
    plan = plan_simulation(settings.spec)
    run = SimulationRun(settings, plan)
    checks = settings.checks
    wall_start = time.perf_counter()
    lying = any(fault.name == "lying_component" for fault in plan.runtime_faults)
    epoch = VIRTUAL_EPOCH_MS if settings.clock == "virtual" else None
    shutdown_at: int | None = None
    watchdog = None
    async with open_actor_system(epoch_ms=epoch) as system:
        # The runtime runs inside this system, and the simulated actors outlive it: after a shutdown (figure 9)
        # they still hold their receipts, and what the runtime left behind shows.
        names_before = set(system.names())
        tally = system.spawn(SupervisionTally, name="sim/supervision")
        # The first ask with a timeout starts the system's own deadline service (it outlives any runtime): started
        # before the count, so that the count before and after the runtime differ only by what the runtime left.
        await tally.ask(GetTally(), timeout=10.0)
        tasks_before = _tasks_not_simulated()
        async with (
            open_runtime(
                settings.runtime, system=system, sinks=[run.alerts.append], register_bridge=not lying
            ) as runtime,
            AsyncExitStack() as stack,
        ):
            runtime.events.subscribe(tally)
            liar: LyingComponent | None = None
            if lying:
                # Registered in the bridge's place: honest (a pass-through) except while the fault is on.
                liar = LyingComponent(runtime.bridge, history=run.history, target=BRIDGE_COMPONENT_ID)
                liar.lying = False
                await runtime.monitor.register_component_for_monitoring(BRIDGE_COMPONENT_ID, liar, observes_flow=True)
            if settings.clock == "real" and (
                checks.watch_loop or any(fault.name == "monitor_block" for fault in plan.runtime_faults)
            ):
                from ._watchdog import open_loop_watchdog

                watchdog = await stack.enter_async_context(open_loop_watchdog(system, threshold=0.1, interval=0.02))
            await _instrument_monitor(run, runtime, stack)
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
                if checks.readiness_every is not None:
                    tasks.start_soon(sample_readiness, run, runtime, checks.readiness_every)
                if checks.monitor_mailbox:
                    tasks.start_soon(sample_monitor_mailbox, run, runtime)
                with anyio.CancelScope() as traffic:
                    if interrupt is not None:
                        tasks.start_soon(_cancel_on, interrupt, traffic, run)
                    for fault in plan.runtime_faults:
                        tasks.start_soon(apply_at, run, runtime, fault, liar)
                    await _traffic(run, runtime, agents, clients)
                tasks.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                if checks.monitor_mailbox:
                    await _monitor_drained(run, runtime)
                for client in clients:
                    client.tell(FinishClient())
                seen = await observe(run, runtime, agents, clients, tally)
                # Figure 9: the runtime shuts down now, the instant the last run has finished, with frames still
                # queued for the slow readers.
                shutdown_at = system.clock.now_ms()
        with anyio.CancelScope(shield=True):
            shutdown: ShutdownFacts | None = None
            if checks.shutdown_within is not None and shutdown_at is not None and not run.interrupted:
                stopped_at = system.clock.now_ms()
                seen.clients = await _closed_clients(clients, checks.shutdown_within + 5.0)
                refs: list[ActorRef[Any]] = [*agents, *clients, tally]
                for ref in refs:
                    await ref.stop(timeout=1.0)
                shutdown = ShutdownFacts(
                    began_at=shutdown_at,
                    stopped_at=stopped_at,
                    leftovers=sorted(set(system.names()) - names_before - {tally.name}),
                    tasks_before=tasks_before,
                    tasks_after=_tasks_not_simulated(),
                )
            report = build_report(
                run,
                seen,
                wall_start,
                None if watchdog is None else watchdog.blocks,
                after_shutdown=shutdown is not None,
            )
            extra = run_criteria(run, seen, report, shutdown=shutdown, watchdog=watchdog)
    if extra:
        criteria = (*report.criteria, *extra)
        report = msgspec.structs.replace(
            report, criteria=criteria, passed=not failed_criteria(criteria) and not report.interrupted
        )
    alerts = [
        (anomaly.kind.value, anomaly.thread_id, anomaly.run_id, anomaly.tool_call_id, anomaly.detected_at)
        for anomaly in run.alerts
    ]
    return RunFacts(report=report, clients=seen.clients, alerts=alerts)


def _tasks_not_simulated() -> int:
    # The simulated actors (all named sim/...) come and go with the simulation, not with the runtime.
    return sum(1 for task in anyio.get_running_tasks() if not (task.name or "").startswith("actor:sim/"))


async def _instrument_monitor(run: SimulationRun, runtime: Runtime, stack: AsyncExitStack) -> None:
    """Figure 4: record every lifecycle event the monitor's handler gets, and slow every handler to its pace."""
    checks = run.settings.checks
    monitor = runtime.monitor_ref()
    if monitor is None:
        return
    if checks.monitor_mailbox:
        await stack.enter_async_context(inject(runtime.system, monitor, LifecycleSeen(run), history=run.history))
    if checks.monitor_pace is not None:
        await stack.enter_async_context(inject(runtime.system, monitor, Slow(checks.monitor_pace), history=run.history))


async def _monitor_drained(run: SimulationRun, runtime: Runtime) -> None:
    monitor = runtime.monitor_ref()
    if monitor is None:
        return
    with anyio.move_on_after(60.0):
        while monitor.statistics().queued > 0:  # noqa: ASYNC110  # another actor's counter: it signals nothing
            await anyio.sleep(0.01)
    run.monitor_final = monitor.statistics()


async def _closed_clients(clients: Sequence[ActorRef[Any]], timeout: float) -> list[ClientReport]:
    """The clients' reports once each has seen its connection closed (or ``timeout`` passed)."""
    reports: list[ClientReport] = []
    with anyio.move_on_after(timeout):
        while True:
            reports = await ask_all(clients, GetClientReport())
            if all(not report.connected for report in reports):
                break
            await anyio.sleep(0.05)
    return await ask_all(clients, GetClientReport())


async def _cancel_on(event: anyio.Event, scope: anyio.CancelScope, run: SimulationRun) -> None:
    await event.wait()
    run.interrupted = True
    scope.cancel()


async def _traffic(
    run: SimulationRun, runtime: Runtime, agents: Sequence[ActorRef[Any]], clients: Sequence[ActorRef[Any]]
) -> None:
    """Let the traffic run, then its tail, then the detection deadlines, then drain delivery (figure 9: not these
    two; the runtime shuts down as soon as the last run has finished)."""
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
        # Figure 9 shuts down the instant the last run has finished: poll finely there (it costs only asks).
        await anyio.sleep(1.0 if settings.checks.shutdown_within is None else 0.01)
    if settings.checks.shutdown_within is not None:
        run.phase = "shutting down"
        return
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


async def _sample_health(run: SimulationRun, runtime: Runtime) -> None:
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


async def _report_progress(run: SimulationRun, runtime: Runtime, on_progress: Callable[[Progress], None]) -> None:
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


#: The backends figure 10 compares, in the order they run.
BOTH_BACKENDS: Final = ("asyncio", "trio")


def combine_backends(first: RunFacts, second: RunFacts) -> SimulationReport:
    """Figure 10: the first backend's report, with the criteria that compare it with the second's."""
    report = first.report
    criteria = (*report.criteria, *determinism_criteria(first, second, BOTH_BACKENDS))
    return msgspec.structs.replace(
        report,
        criteria=criteria,
        passed=not failed_criteria(criteria) and not report.interrupted and not second.report.interrupted,
        interrupted=report.interrupted or second.report.interrupted,
    )


def simulate_on_both_backends(settings: SimulationSettings) -> SimulationReport:
    """Run the same settings on asyncio's and on trio's virtual clock, one after the other (each in a fresh event
    loop: call it from synchronous code), and report the first run with the criteria comparing the two.

    :raises ValueError: when the settings are not on the virtual clock (a real clock is never reproducible)
    """
    if settings.clock != "virtual":
        raise ValueError("comparing backends needs the virtual clock (clock='virtual')")
    runs = []
    for backend in BOTH_BACKENDS:
        name, options = virtual_time_backend(backend)
        runs.append(anyio.run(partial(simulate_with_facts, settings), backend=name, backend_options=options)[1])
    return combine_backends(runs[0], runs[1])
