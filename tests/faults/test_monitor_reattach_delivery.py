from __future__ import annotations

import anyio
import pytest

from actors.chat._anomaly import Anomaly, AnomalyKind
from supervisors.app import MONITOR, MONITORING
from supervisors.faults import FaultHistory, crash_once
from tests.conftest import virtual_time
from tests.faults._harness import Workload, all_received, fast_config, runtime_with_clients, until

pytestmark = pytest.mark.anyio

COOLDOWN = 5.0
UNDELIVERED_AFTER = 5.0  # the monitor's default threshold


class TestMonitorReattachDelivery:
    @virtual_time
    async def test_events_delivered_while_monitoring_detached_not_reported_undelivered_after_reattach(self) -> None:
        # Regression: a re-attached monitor rebuilt the detached period's events from the replay rings but never
        # got their delivery confirmations (the bridge reports none while no monitor is attached, and attached
        # the new one only after its rebuild), so every thread without later traffic was reported undelivered.
        history = FaultHistory()
        alerts: list[Anomaly] = []
        config = fast_config(
            monitor_intensity=0, monitoring_intensity=0, monitoring_period=10.0, detach_cooldown=COOLDOWN
        )
        workload = Workload(3, threads=4, events_per_thread=60)
        threads = workload.threads
        async with runtime_with_clients(config, threads, per_thread=2, history=history, sinks=[alerts.append]) as (
            runtime,
            clients,
        ):
            monitoring = runtime.system.lookup(MONITORING)
            assert await crash_once(runtime.system, MONITOR, history=history)
            await until(lambda: not monitoring.is_alive)  # the branch is detached: no monitor is attached
            await workload.drive(runtime, rate=200.0)  # published and delivered while detached
            await all_received(clients, workload)
            await until(lambda: monitoring.is_alive, timeout=COOLDOWN + 10)  # re-attached after the cool-down
            await anyio.sleep(UNDELIVERED_AFTER + 2.0)  # past every replayed event's delivery deadline
        undelivered = [alert for alert in alerts if alert.kind is AnomalyKind.UNDELIVERED_EVENT]
        assert undelivered == []
