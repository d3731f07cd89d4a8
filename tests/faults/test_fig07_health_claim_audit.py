from __future__ import annotations

import random
from typing import TYPE_CHECKING

import anyio
import pytest

from actors.chat._anomaly import AnomalyKind
from actors.chat._detection import DetectionThresholds
from actors.chat._monitor import MonitorConfig
from supervisors._config import BridgeSettings, RuntimeConfig
from supervisors.app import BRIDGE_COMPONENT_ID
from supervisors.faults import FaultHistory, LyingComponent
from tests.conftest import virtual_time
from tests.faults._harness import Workload, report, runtime_with_clients

if TYPE_CHECKING:
    from actors.chat._anomaly import Anomaly

pytestmark = pytest.mark.anyio

# Figure 7: a bridge whose clients all stop reading (nothing it routes is delivered) while its registration keeps
# claiming "healthy" is flagged health_claim_mismatch within two audit intervals, in every run; an honest bridge is
# never flagged. Several seeds move the onset against the audit phase and change the traffic.
SEEDS = range(4)
AUDIT_INTERVAL = 2.0
CONFIG = RuntimeConfig(
    # Clients that stop reading are never closed within the run: the lie lasts (writers' queues are large).
    bridge=BridgeSettings(tick_interval=0.05, slow_consumer_after=600.0, writer_queue_capacity=10_000),
    monitor=MonitorConfig(
        thresholds=DetectionThresholds(undelivered_after=1.0),
        check_interval=0.25,
        audit_interval=AUDIT_INTERVAL,
    ),
)


async def audited_run(seed: int, *, lying: bool) -> tuple[float | None, list[Anomaly]]:
    """Traffic through a bridge registered for audits; with ``lying``, every client stops reading at a seeded
    onset while a LyingComponent claims healthy. Return the onset (s on the runtime clock) and the mismatch alerts.
    """
    rng = random.Random(seed)
    onset_after = rng.uniform(1.0, 1.0 + 2 * AUDIT_INTERVAL)
    duration = onset_after + 3 * AUDIT_INTERVAL + 1.0
    workload = Workload(seed, threads=4, events_per_thread=int(duration * 10))
    history = FaultHistory()
    alerts: list[Anomaly] = []
    async with runtime_with_clients(
        CONFIG, workload.threads, per_thread=2, history=history, sinks=[alerts.append], register_bridge=False
    ) as (runtime, clients):
        liar = LyingComponent(runtime.bridge, history=history, target=BRIDGE_COMPONENT_ID)
        component = liar if lying else runtime.bridge
        await runtime.monitor.register_component_for_monitoring(BRIDGE_COMPONENT_ID, component, observes_flow=True)
        onset: float | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: workload.drive(runtime, rate=len(workload.plan) / duration))
            await anyio.sleep(onset_after)
            if lying:
                onset = runtime.system.clock.now_ms() / 1000
                history.record(BRIDGE_COMPONENT_ID, "silent_drop", "trigger", "every client stopped reading")
                for client in clients:
                    assert client.sink is not None
                    client.sink.stall()
        for client in clients:
            assert client.sink is not None
            client.sink.release()  # let the runtime shut down promptly
    return onset, [a for a in alerts if a.kind is AnomalyKind.HEALTH_CLAIM_MISMATCH]


class TestHealthClaimAudit:
    @virtual_time
    @pytest.mark.xfail(
        strict=True,
        reason="open (monitor audit): undelivered_event is reported once per stalled gap, and an audit whose window "
        "mixes deliveries from before the stall (>= 10% of the routed events) with its first undelivered report "
        "judges the claim consistent and resets the window; later windows then hold no overdue report, are never "
        "judgeable, and the lie is never flagged (seeds whose onset falls early in an audit window)",
    )
    async def test_bridge_dropping_everything_while_claiming_healthy_flagged_within_two_audits_every_seed(
        self,
    ) -> None:
        outcomes: dict[int, float | None] = {}
        for seed in SEEDS:
            onset, mismatches = await audited_run(seed, lying=True)
            assert onset is not None
            assert len(mismatches) <= 1, (seed, mismatches)  # one episode, reported once
            outcomes[seed] = mismatches[0].detected_at / 1000 - onset if mismatches else None
        report("fig7-lying", audit_interval=AUDIT_INTERVAL, delays={str(k): v for k, v in outcomes.items()})
        # Flagged in every run, within two audit intervals of the onset.
        assert all(delay is not None and 0 < delay <= 2 * AUDIT_INTERVAL for delay in outcomes.values()), outcomes

    @virtual_time
    async def test_honest_bridge_never_flagged_every_seed(self) -> None:
        for seed in SEEDS:
            _, mismatches = await audited_run(seed, lying=False)
            assert mismatches == [], seed
        report("fig7-honest", runs=len(SEEDS), flagged=0)
