from __future__ import annotations

import anyio
import pytest

from supervisors import SupervisorEventKind
from supervisors._watchdog import open_loop_watchdog
from supervisors.app import MONITOR, MONITORING
from supervisors.faults import (
    BlockLoop,
    FaultHistory,
    Hang,
    check_delivery,
    check_history,
    inject,
    record_supervision,
)
from tests.behaviour.test_watchdog import INTERVAL, loop_margins
from tests.conftest import virtual_time
from tests.faults._harness import (
    Workload,
    all_received,
    delivery_latencies,
    fast_config,
    logs,
    report,
    runtime_with_clients,
    until,
)

pytestmark = pytest.mark.anyio

# Figure 3: a monitor that hangs in an await, and one that blocks the event loop synchronously.
HANDLER_DEADLINE = 0.5


class TestMonitorHang:
    @virtual_time
    async def test_monitor_handler_awaits_forever_cancelled_at_deadline_restarted_bridge_unaffected(self) -> None:
        history = FaultHistory()
        workload = Workload(3, threads=10, events_per_thread=200)
        config = fast_config(monitor_handler_timeout=HANDLER_DEADLINE)
        async with runtime_with_clients(config, workload.threads, per_thread=2, history=history) as (runtime, clients):
            record_supervision(runtime.system, runtime.events, history)
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: workload.drive(runtime, rate=1000.0))
                await anyio.sleep(0.3)
                async with inject(runtime.system, MONITOR, Hang(times=3), history=history) as hang:
                    await until(lambda: runtime.system.lookup(MONITOR).statistics().restarts >= 3)
            await all_received(clients, workload)
            assert isinstance(hang, Hang)
            assert hang.hangs == 3
            failures = [
                e for e in runtime.events.history() if e.child_id == "monitor" and e.kind is SupervisorEventKind.FAILED
            ]
            # Each hang was cut at the handler deadline (a HandlerTimeout), counted as a failure, and restarted.
            assert len(failures) == 3
            assert all("past its deadline of 0.5 s" in e.reason for e in failures)
            assert runtime.system.lookup(MONITOR).statistics().restarts == 3
            assert runtime.monitoring_state() == "running"
            assert runtime.bridge.ref.statistics().restarts == 0
            # Every event reached every client at the instant it was published, while the monitor hung three times.
            check_delivery(logs(clients), last_seqs=workload.last_seqs()).raise_for_problems()
            assert set(delivery_latencies(clients, workload)) == {0.0}
            check_history(history, triggered=True).raise_for_problems()
            report("fig3-hang", hangs=hang.hangs, failures=len(failures), events=len(workload.published))


class TestMonitorBlocksLoop:
    # The real clock: a synchronous block stops time for the loop itself, so only real time can show it. The
    # watchdog's threshold and the block's length are sized from the scheduling noise measured first (a 0.15 s
    # threshold and a ~0.5 s block on a quiet machine; more on a loaded one), and nothing asserts a duration.
    async def test_monitor_blocks_loop_watchdog_names_it_supervisor_restarts_it_stall_reported(self) -> None:
        margins = await loop_margins()
        history = FaultHistory()
        workload = Workload(4, threads=4, events_per_thread=60)
        async with runtime_with_clients(fast_config(), workload.threads, per_thread=2, history=history) as (
            runtime,
            clients,
        ):
            record_supervision(runtime.system, runtime.events, history)

            def on_block(block: object) -> None:
                history.record(str(getattr(block, "actor", None)), "loop_block", "effect", repr(block))

            async with open_loop_watchdog(
                runtime.system, threshold=margins.threshold, interval=INTERVAL, on_block=on_block
            ) as dog:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lambda: workload.drive(runtime, rate=400.0))
                    await anyio.sleep(0.1)
                    block_loop = BlockLoop(margins.block, times=1)
                    async with inject(runtime.system, MONITOR, block_loop, history=history) as block:
                        await until(
                            lambda: runtime.system.lookup(MONITOR).statistics().restarts >= 1, step=0.005, timeout=10
                        )
                await all_received(clients, workload)
            assert isinstance(block, BlockLoop)
            assert block.blocks == 1
            # The watchdog named the monitor, told its supervisor, and the supervisor applied its policy: restart.
            # (A loaded machine may add lags no actor held: those are reported unattributed and are not counted.)
            blocks = [b for b in dog.history() if b.actor is not None]
            assert [(b.actor, b.supervisor) for b in blocks] == [(MONITOR, MONITORING)]
            assert blocks[0].seconds > margins.threshold
            kinds = [e.kind for e in runtime.events.history() if e.child_id == "monitor"]
            assert SupervisorEventKind.BLOCKED_LOOP in kinds
            assert kinds.count(SupervisorEventKind.RESTARTED) == 1
            # The stall is measured and reported: in the fault's trigger, the watchdog's report and the history.
            assert len(block.stalls) == 1
            assert history.triggers("block_loop")[0].detail.endswith(f"loop held {block.stalls[0]:.3f} s")
            assert len(history.effects("loop_block", target=MONITOR)) == 1
            # The bridge was stalled with everyone else (the process-isolation issue removes that), but it lost
            # nothing, kept order, and was never restarted.
            check_delivery(logs(clients), last_seqs=workload.last_seqs()).raise_for_problems()
            assert runtime.bridge.ref.statistics().restarts == 0
            assert runtime.monitoring_state() == "running"
            latencies = delivery_latencies(clients, workload)
            report(
                "fig3-block",
                requested_s=round(block.seconds, 4),
                threshold_s=round(margins.threshold, 4),
                measured_noise_s=round(margins.noise, 4),
                loop_held_s=round(block.stalls[0], 4),
                watchdog_reported_s=round(blocks[0].seconds, 4),
                bridge_latency_max_s=round(max(latencies), 4),
                events=len(workload.published),
            )
