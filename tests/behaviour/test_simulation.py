from __future__ import annotations

import anyio
import pytest

from actors import virtual_time_backend
from actors.sim._faults import SCENARIO_KINDS, parse_fault
from actors.sim._plan import SimulationSpec
from actors.sim._report import SimulationReport, report_without_wall
from supervisors.simulate import SimulationSettings, simulate
from tests.conftest import virtual_time

pytestmark = pytest.mark.anyio

# Every monitor scenario once, in five simulated minutes on eight threads.
SCENARIOS = tuple(f"{kind}:count=1" for kind in SCENARIO_KINDS)
# Runtime faults the bridge must shrug off: no event lost, none out of order, none twice.
RUNTIME_FAULTS = (
    "monitor_crash:count=3",
    "monitor_flood:count=1,messages=5000",
    "monitor_block:count=1,seconds=0.01",
    "lying_component:count=1",
    "client_disconnect:count=3",
    "bridge_connection_errors:count=2",
    "slow_client:count=1,duration=8s",
)


def settings(*faults: str, seed: int = 3, duration: float = 300.0) -> SimulationSettings:
    spec = SimulationSpec(
        seed=seed, duration=duration, threads=8, clients=4, faults=tuple(parse_fault(text) for text in faults)
    )
    return SimulationSettings(spec=spec, sample_every=30.0)


def criterion(report: SimulationReport, name: str) -> bool:
    (found,) = [item for item in report.criteria if item.name == name]
    return found.passed


class TestSimulation:
    @virtual_time
    async def test_simulation_every_scenario_detected_once_without_false_positives(self) -> None:
        report = await simulate(settings(*SCENARIOS))
        kinds = {score.kind: score for score in report.detection.kinds}
        assert set(SCENARIO_KINDS) <= set(kinds)
        for kind in SCENARIO_KINDS:
            score = kinds[kind]
            assert score.injected >= 1, kind
            assert (score.recall, score.false_positives, score.missed) == (1.0, 0, 0), kind
            assert score.latency_p50_ms is not None
            assert score.latency_p50_ms >= 0
        assert report.detection.false_positives == ()
        assert report.detection.alerts == report.detection.reported
        assert report.passed

    @virtual_time
    async def test_simulation_runtime_faults_every_event_delivered_in_order(self) -> None:
        report = await simulate(settings(*RUNTIME_FAULTS))
        events, deliveries, clients = report.events, report.deliveries, report.client_totals
        assert events.conserved
        assert events.produced == events.accepted > 1000
        assert deliveries.conserved
        assert deliveries.in_flight == 0
        assert clients.frames == deliveries.delivered
        assert (clients.missing, clients.duplicates, clients.resume_gaps) == (0, 0, 0)
        assert clients.complete == clients.clients == 4
        assert clients.resumes >= 5  # every disconnect and failed send was followed by a resume
        closes = clients.closes
        assert closes.get("1000") == 3
        assert closes.get("1011") == 2
        assert report.supervision.bridge_restarts == 0
        assert report.supervision.by_child["agentwatch/monitoring/monitor"]["restarted"] >= 3
        lie = {score.kind: score for score in report.detection.kinds}["health_claim_mismatch"]
        assert (lie.injected, lie.true_positives) == (1, 1)
        assert report.passed, [item for item in report.criteria if not item.passed]

    # Regression (runtime): a monitor restarted after a hang of monitor_handler_timeout (5 s) rebuilt its run state
    # and fired the delivery deadline of the event it hung on before handling the DeliveryProgress that confirmed it,
    # queued meanwhile (actors/chat/_monitor.py, ChatEventMonitor._rebuild and _on_progress).
    @virtual_time
    async def test_simulation_monitor_hang_no_false_undelivered_event(self) -> None:
        report = await simulate(settings("monitor_hang:at=100s", duration=150.0))
        assert report.supervision.handler_timeouts == 1
        assert report.detection.false_positives == ()

    @virtual_time
    async def test_simulation_interrupted_partial_report_scores_only_what_was_due(self) -> None:
        interrupt = anyio.Event()
        with anyio.CancelScope() as scope:

            async def stop_after(seconds: float) -> None:
                await anyio.sleep(seconds)
                interrupt.set()

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(stop_after, 120.0)
                report = await simulate(settings(*SCENARIOS), interrupt=interrupt)
                scope.cancel()
        assert report.interrupted
        assert not report.passed
        assert 120.0 <= report.simulated_s < 150.0
        # Scenarios not yet due when it stopped are neither missed nor detected.
        assert all(score.missed == 0 for score in report.detection.kinds)
        assert sum(score.injected for score in report.detection.kinds) < len(SCENARIO_KINDS)


class TestDeterminism:
    def test_simulation_same_seed_same_report_on_asyncio_and_trio(self) -> None:
        faults = (
            "stuck_tool:count=1",
            "orphan_tool_completed:count=1",
            "monitor_crash:every=40s",
            "client_disconnect:count=2",
            "slow_client:count=1,duration=6s",
            "lying_component:count=1,duration=22s",
        )

        def run(backend: str, seed: int) -> SimulationReport:
            name, options = virtual_time_backend(backend)
            return anyio.run(
                simulate, settings(*faults, seed=seed, duration=180.0), backend=name, backend_options=options
            )

        first = run("asyncio", 11)
        assert first.wall.backend == "asyncio"
        again = run("asyncio", 11)
        on_trio = run("trio", 11)
        assert on_trio.wall.backend == "trio"
        assert report_without_wall(again) == report_without_wall(first)
        assert report_without_wall(on_trio) == report_without_wall(first)
        assert report_without_wall(run("asyncio", 12)) != report_without_wall(first)
