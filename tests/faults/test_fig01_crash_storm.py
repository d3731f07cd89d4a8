from __future__ import annotations

import anyio
import pytest

from supervisors import SupervisorEventKind
from supervisors.app import MONITOR
from supervisors.faults import (
    BridgeClient,
    FaultHistory,
    Schedule,
    added_latency,
    check_bridge_accounting,
    check_delivery,
    check_history,
    crash_once,
    critical_path_budget,
    record_supervision,
    run_schedule,
)
from tests.conftest import virtual_time
from tests.faults._harness import Workload, all_received, fast_config, logs, report, runtime_with_clients, scaled

pytestmark = pytest.mark.anyio

# Figure 1 (docs/reliability.md): the monitor crashed over and over while the bridge carries sustained load.
SEED = 1
THREADS = 20
CLIENTS_PER_THREAD = 2
EVENTS_PER_THREAD = scaled(100)
RATE = 1000.0  # events per second, all threads together
CRASHES = scaled(100)


async def run_storm(*, crashes: int) -> tuple[list[BridgeClient], Workload, FaultHistory, dict[str, int]]:
    """The workload through a fresh runtime, with ``crashes`` monitor crashes spread over it (0: the baseline)."""
    workload = Workload(SEED, threads=THREADS, events_per_thread=EVENTS_PER_THREAD)
    history = FaultHistory()
    # A budget the storm cannot exhaust: this figure is about the bridge, not about detaching (figure 2).
    config = fast_config(monitor_intensity=100_000, monitor_period=1.0)
    async with runtime_with_clients(config, workload.threads, per_thread=CLIENTS_PER_THREAD, history=history) as (
        runtime,
        clients,
    ):
        record_supervision(runtime.system, runtime.events, history)
        horizon = len(workload.plan) / RATE
        schedule = Schedule.random(SEED, count=crashes, horizon=horizon * 0.9, min_gap=horizon * 0.9 / (crashes + 1))
        async with critical_path_budget(runtime.bridge, p99_ms=0, lost=0, restarts=0, discarded=0) as budget:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: workload.drive(runtime, rate=RATE))
                crashed = await run_schedule(schedule, lambda _: crash_once(runtime.system, MONITOR, history=history))
            await all_received(clients, workload)
        assert crashed == crashes
        check_bridge_accounting(await runtime.bridge.get_metrics()).raise_for_problems()
        counts = {
            "bridge_restarts": runtime.bridge.ref.statistics().restarts,
            "monitor_restarts": runtime.system.lookup(MONITOR).statistics().restarts,
            "frames": budget.frames,
        }
        kinds = [e.kind for e in runtime.events.history() if e.child_id == "bridge"]
        assert SupervisorEventKind.FAILED not in kinds
    return clients, workload, history, counts


class TestMonitorCrashStorm:
    @virtual_time
    async def test_monitor_crashed_repeatedly_bridge_delivers_everything_in_order_without_added_latency(self) -> None:
        baseline, base_workload, _, _ = await run_storm(crashes=0)
        clients, workload, history, counts = await run_storm(crashes=CRASHES)
        last = workload.last_seqs()
        # 100% delivered, in per-thread order, no seq gap, nothing twice, to every client.
        check_delivery(logs(clients), last_seqs=last).raise_for_problems()
        assert sum(len(c.log.covered(t)) for c in clients for t in c.log.starts) == sum(last.values()) * 2
        assert counts["bridge_restarts"] == 0
        assert counts["monitor_restarts"] == CRASHES
        assert history.count("poison") == CRASHES
        assert len(history.select(fault="supervision", target=MONITOR)) >= 2 * CRASHES  # failed + restarted
        check_history(history).raise_for_problems()
        # On the virtual clock the comparison is exact: every event reached every client at the very instant it
        # did in the run without faults.
        latency = added_latency(
            logs(clients), logs(baseline), faulty_origin=workload.origin, baseline_origin=base_workload.origin
        )
        assert latency.missing == 0
        assert latency.compared == sum(last.values()) * CLIENTS_PER_THREAD
        assert latency.max == 0.0
        report(
            "fig1",
            threads=THREADS,
            clients=len(clients),
            events=sum(last.values()),
            deliveries=latency.compared,
            crashes=history.count("poison"),
            monitor_restarts=counts["monitor_restarts"],
            bridge_restarts=counts["bridge_restarts"],
            added_latency_p99_ms=latency.p99_ms,
            added_latency_max_ms=latency.max * 1000,
        )
