from __future__ import annotations

import anyio
import pytest

from actors.chat._bridge_messages import SubscribeOutcome
from actors.chat._connection import CloseCode
from supervisors._config import BridgeSettings, RuntimeConfig
from supervisors.faults import (
    BridgeClient,
    FaultHistory,
    added_latency,
    check_bridge_accounting,
    check_delivery,
    critical_path_budget,
)
from tests.conftest import virtual_time
from tests.faults._harness import Workload, all_received, logs, report, runtime_with_clients, scaled

pytestmark = pytest.mark.anyio

# Figure 6: one client reading 10 frames a second among 50 (10 threads x 5 clients; the slow one shares its thread
# with 4 fast ones). The others must not notice; the slow one is closed with 4001 and resumes without loss.
SEED = 6
THREADS = 10
PER_THREAD = 5
EVENTS_PER_THREAD = scaled(200)
RATE = 500.0  # events per second in all: 50 per thread
SLOW_RATE = 10.0
CONFIG = RuntimeConfig(bridge=BridgeSettings(tick_interval=0.05, writer_queue_capacity=64, slow_consumer_after=1.0))
SLOW = "t0/c0"


async def run_clients(*, slow: bool) -> tuple[list[BridgeClient], Workload, FaultHistory, int]:
    workload = Workload(SEED, threads=THREADS, events_per_thread=EVENTS_PER_THREAD)
    history = FaultHistory()
    async with runtime_with_clients(CONFIG, workload.threads, per_thread=PER_THREAD, history=history) as (
        runtime,
        clients,
    ):
        slow_client = next(client for client in clients if client.name == SLOW)
        if slow:
            slow_client.read_slowly(SLOW_RATE)
        closes = 0
        async with critical_path_budget(runtime.bridge, lost=0, restarts=0, slow_consumer_closes=1 if slow else 0):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: workload.drive(runtime, rate=RATE))
                if slow:
                    # The slow reader falls behind; the bridge closes it with 4001; it resumes at full speed.
                    assert await slow_client.wait_closed(timeout=60.0) == CloseCode.SLOW_CONSUMER
                    closes += 1
                    results = await slow_client.resume()
                    assert [r.outcome for r in results.values()] == [SubscribeOutcome.SUBSCRIBED]
            await all_received(clients, workload)
        check_bridge_accounting(await runtime.bridge.get_metrics()).raise_for_problems()
    return clients, workload, history, closes


class TestSlowClientIsolation:
    @virtual_time
    async def test_one_slow_reader_among_fifty_others_unaffected_slow_one_closed_4001_resumes_lossless(self) -> None:
        baseline, base_workload, _, _ = await run_clients(slow=False)
        clients, workload, history, closes = await run_clients(slow=True)
        last = workload.last_seqs()
        # Everyone, the slow client included (across its two connections), got every event once, in order.
        check_delivery(logs(clients), last_seqs=last).raise_for_problems()
        slow = next(client for client in clients if client.name == SLOW)
        assert closes == 1
        # Closed for being slow, then (its resumed connection) at the runtime's shutdown.
        assert [close.code for close in slow.log.closes] == [CloseCode.SLOW_CONSUMER, CloseCode.GOING_AWAY]
        assert slow.connections == 2
        assert len(history.select(fault="resume", target=SLOW)) == 1
        # The 49 others: every event at the same instant as without the slow client (p99 within 10%: here equal).
        others = [client for client in clients if client.name != SLOW]
        base_others = [client for client in baseline if client.name != SLOW]
        latency = added_latency(
            logs(others), logs(base_others), faulty_origin=workload.origin, baseline_origin=base_workload.origin
        )
        assert latency.missing == 0
        assert latency.compared == sum(last.values()) * PER_THREAD - last["t0"]
        assert latency.max == 0.0
        report(
            "fig6",
            clients=len(clients),
            events=sum(last.values()),
            others_deliveries=latency.compared,
            others_added_p99_ms=latency.p99_ms,
            slow_closes=[close.code for close in slow.log.closes],
            slow_received=len(slow.log.covered("t0")),
            slow_owed=last["t0"],
        )
