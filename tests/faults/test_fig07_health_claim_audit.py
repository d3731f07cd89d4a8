from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Literal

import anyio
import pytest

from actors.chat._anomaly import AnomalyKind
from actors.chat._connection import CloseCode
from actors.chat._detection import DetectionThresholds
from actors.chat._monitor import MonitorConfig
from supervisors import SupervisorEventKind
from supervisors._config import BridgeSettings, RuntimeConfig, SupervisionSettings
from supervisors.app import BRIDGE_COMPONENT_ID, MONITOR
from supervisors.faults import FaultHistory, LyingComponent, crash_once
from tests.conftest import virtual_time
from tests.faults._harness import Workload, report, runtime_with_clients

if TYPE_CHECKING:
    from actors.chat._anomaly import Anomaly
    from supervisors.app import Runtime
    from supervisors.faults import BridgeClient

pytestmark = pytest.mark.anyio

# Figure 7: a bridge whose clients all stop reading (nothing it routes is delivered) while its registration keeps
# claiming "healthy" is flagged health_claim_mismatch within two audit intervals, in every run; an honest bridge is
# never flagged, also with a slow client that the bridge closes, or with the monitor detached and re-attached.
# Seed k puts the onset at phase (k + u) / 12 of an audit interval (u uniform in [0, 1)), so the twelve runs cover
# the whole interval: onsets just after an audit (whose window then mostly holds deliveries from before the onset),
# just before one (too early for any event to be overdue yet), and between. The seed also sets the traffic.
SEEDS = range(12)
AUDIT_INTERVAL = 2.0
UNDELIVERED_AFTER = 1.0
WARMUP = 2 * AUDIT_INTERVAL  # honest audits before the onset
CONFIG = RuntimeConfig(
    # Clients that stop reading are never closed within the run: the lie lasts (writers' queues are large).
    bridge=BridgeSettings(tick_interval=0.05, slow_consumer_after=600.0, writer_queue_capacity=10_000),
    monitor=MonitorConfig(
        thresholds=DetectionThresholds(undelivered_after=UNDELIVERED_AFTER),
        check_interval=0.25,
        audit_interval=AUDIT_INTERVAL,
    ),
)


class AuditedBridge:
    """Wraps the component registered for the bridge and records when each audit read its claim (runtime clock, s)."""

    def __init__(self, component: Any, runtime: Runtime) -> None:
        self.component = component
        self.runtime = runtime
        self.reads: list[float] = []

    async def get_health_status(self) -> Any:
        self.reads.append(self.runtime.system.clock.now_ms() / 1000)
        return await self.component.get_health_status()

    async def get_metrics(self) -> Any:
        return await self.component.get_metrics()

    def register_monitor_observer(self, observer: Any) -> None:
        self.component.register_monitor_observer(observer)


class Outcome:
    """One run: the onset (s, runtime clock), its phase in the audit interval (0..1), the alerts, the audit reads."""

    def __init__(self, onset: float, reads: list[float], alerts: list[Anomaly]) -> None:
        self.onset = onset
        before = [at for at in reads if at <= onset]
        assert before, "no audit before the onset"
        self.phase = (onset - before[-1]) / AUDIT_INTERVAL
        self.alerts = alerts
        self.reads = reads

    def of(self, kind: AnomalyKind) -> list[Anomaly]:
        return [a for a in self.alerts if a.kind is kind]

    @property
    def mismatches(self) -> list[Anomaly]:
        return self.of(AnomalyKind.HEALTH_CLAIM_MISMATCH)

    def delay(self) -> float | None:
        """Detection delay in audit intervals after the onset (None: not flagged)."""
        mismatches = self.mismatches
        return (mismatches[0].detected_at / 1000 - self.onset) / AUDIT_INTERVAL if mismatches else None


async def audited_run(
    seed: int,
    *,
    fault: Literal["lie", "none", "slow", "detach"],
    config: RuntimeConfig = CONFIG,
    after_onset: float = 3 * AUDIT_INTERVAL + 1.0,
) -> tuple[Outcome, list[BridgeClient], Runtime]:
    """Traffic over four threads (two clients each) through a bridge registered for audits (``observes_flow``);
    at the seed's onset ``fault`` happens:

    - ``lie``: every client stops reading while a LyingComponent claims healthy for the bridge;
    - ``none``: nothing (the real bridge is registered);
    - ``slow``: both clients of thread t0 read at 2 frames/s (the real bridge is registered, and closes them);
    - ``detach``: the monitor is crashed until the monitoring branch is detached (then re-attached).
    """
    rng = random.Random(seed)
    onset_after = WARMUP + AUDIT_INTERVAL * (seed + rng.random()) / len(SEEDS)
    duration = onset_after + after_onset
    workload = Workload(seed, threads=4, events_per_thread=int(duration * 10))
    history = FaultHistory()
    alerts: list[Anomaly] = []
    async with runtime_with_clients(
        config, workload.threads, per_thread=2, history=history, sinks=[alerts.append], register_bridge=False
    ) as (runtime, clients):
        claimant = LyingComponent(runtime.bridge, history=history, target=BRIDGE_COMPONENT_ID)
        audited = AuditedBridge(claimant if fault == "lie" else runtime.bridge, runtime)
        await runtime.monitor.register_component_for_monitoring(BRIDGE_COMPONENT_ID, audited, observes_flow=True)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: workload.drive(runtime, rate=len(workload.plan) / duration))
            await anyio.sleep(onset_after)
            onset = runtime.system.clock.now_ms() / 1000
            history.record(BRIDGE_COMPONENT_ID, fault, "trigger", f"onset at {onset:.3f} s")
            if fault == "lie":
                for client in clients:
                    assert client.sink is not None
                    client.sink.stall()
            elif fault == "slow":
                for client in clients[:2]:
                    client.read_slowly(2.0)
            elif fault == "detach":
                with anyio.fail_after(10):
                    while runtime.monitoring_state() == "running":
                        await crash_once(runtime.system, MONITOR, history=history)
                        await anyio.sleep(0.05)
        for client in clients:
            if client.sink is not None:
                client.sink.release()  # let the runtime shut down promptly
        outcome = Outcome(onset, audited.reads, alerts)
    return outcome, clients, runtime


def flagged_delays(outcomes: dict[int, Outcome]) -> dict[str, float | None]:
    """Per seed, the detection delay in audit intervals (None: not flagged)."""
    delays = {str(seed): outcome.delay() for seed, outcome in outcomes.items()}
    return {seed: None if delay is None else round(delay, 3) for seed, delay in delays.items()}


class TestHealthClaimAudit:
    # Regression: undelivered_event is reported once per stalled gap, and an audit whose window mixed deliveries
    # from before the stall (>= 10% of the routed events) with its one report judged the claim consistent and
    # reset the window; later windows held no overdue report, were never judgeable, and the lie was never flagged
    # (onsets early in an audit window).
    @virtual_time
    async def test_bridge_dropping_everything_while_claiming_healthy_flagged_within_two_audits_every_phase(
        self,
    ) -> None:
        outcomes: dict[int, Outcome] = {}
        for seed in SEEDS:
            outcome, _, _ = await audited_run(seed, fault="lie")
            outcomes[seed] = outcome
            assert len(outcome.mismatches) <= 1, (seed, outcome.mismatches)  # one episode, reported once
            # The evidence was real: every thread's delivery was found stalled after the onset, not before.
            stalls = outcome.of(AnomalyKind.UNDELIVERED_EVENT)
            assert {a.thread_id for a in stalls} == {"t0", "t1", "t2", "t3"}, seed
            assert all(a.detected_at / 1000 > outcome.onset for a in stalls), seed
        delays = flagged_delays(outcomes)
        phases = sorted(round(o.phase, 3) for o in outcomes.values())
        report("fig7-lying", audit_interval=AUDIT_INTERVAL, delays_in_intervals=delays, phases=phases)
        # The onsets cover the audit interval: the first twelfth, the last twelfth and everything between.
        assert phases[0] < 1 / 12, phases
        assert phases[-1] > 11 / 12, phases
        # Flagged in every run, within two audit intervals of the onset.
        assert all(delay is not None and 0 < delay <= 2 for delay in delays.values()), delays

    @virtual_time
    async def test_honest_bridge_never_flagged_every_seed(self) -> None:
        for seed in SEEDS:
            outcome, _, _ = await audited_run(seed, fault="none")
            assert outcome.alerts == [], seed
            assert len(outcome.reads) >= 5  # audited all along
        report("fig7-honest", runs=len(SEEDS), flagged=0)

    @virtual_time
    async def test_honest_bridge_with_a_slow_thread_closed_as_slow_consumer_never_flagged(self) -> None:
        # The slow clients hold their thread's delivery back past undelivered_after (a stall the audit sees) until
        # the bridge closes them with their code; the other threads deliver all along.
        config = RuntimeConfig(
            bridge=BridgeSettings(tick_interval=0.05, slow_consumer_after=3.0, writer_queue_capacity=10_000),
            monitor=CONFIG.monitor,
        )
        for seed in SEEDS:
            outcome, clients, _ = await audited_run(seed, fault="slow", config=config, after_onset=4 * AUDIT_INTERVAL)
            stalls = outcome.of(AnomalyKind.UNDELIVERED_EVENT)
            assert {a.thread_id for a in stalls} == {"t0"}, (seed, outcome.alerts)
            assert [c.log.closes[0].code for c in clients[:2]] == [CloseCode.SLOW_CONSUMER] * 2, seed
            # The others were closed only at shutdown (1001).
            assert {close.code for c in clients[2:] for close in c.log.closes} == {CloseCode.GOING_AWAY}, seed
            assert outcome.mismatches == [], seed
        report("fig7-honest-slow-client", runs=len(SEEDS), flagged=0)

    @virtual_time
    async def test_honest_bridge_audited_across_a_detached_monitor_never_flagged(self) -> None:
        config = RuntimeConfig(
            bridge=CONFIG.bridge,
            monitor=CONFIG.monitor,
            supervision=SupervisionSettings(
                monitor_intensity=1, monitor_period=5.0, monitoring_intensity=1, detach_cooldown=AUDIT_INTERVAL
            ),
        )
        for seed in SEEDS[:4]:
            outcome, _, runtime = await audited_run(seed, fault="detach", config=config, after_onset=5 * AUDIT_INTERVAL)
            kinds = [e.kind for e in runtime.events.history() if e.child_id == "monitoring"]
            assert SupervisorEventKind.DETACHED in kinds, seed
            assert SupervisorEventKind.REATTACHED in kinds, seed
            assert outcome.mismatches == [], (seed, outcome.alerts)
            # Regression: audits probed the proxy the detached branch had stopped, so the bridge was never audited
            # again after the re-attach.
            assert any(at > outcome.onset + 2 * AUDIT_INTERVAL for at in outcome.reads), seed
        report("fig7-honest-detached", runs=4, flagged=0)
