from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

from actors.chat._connection import MemorySink
from actors.chat._events import RunStarted, TextMessageContent
from actors.chat._monitor import MonitorConfig
from actors.process import ProcessHost, ProcessIsolation
from actors.sim._plan import RuntimeFault
from supervisors import RuntimeConfig, SupervisionSettings, SupervisorEventKind
from supervisors._sim_process_faults import ProcessFaultOutcome, inject_into_process_monitor
from supervisors.app import open_runtime
from supervisors.faults import FaultHistory
from tests.behaviour.test_bridge_support import seqs

if TYPE_CHECKING:
    from actors import ActorRef
    from supervisors.app import Runtime

# The simulator's monitor faults against a monitor in a worker process: real processes, so the real clock; every
# wait in the code under test is bounded, and GUARD only stops a test that would otherwise hang.
GUARD = 30.0


def process_config(*, handler_timeout: float = 5.0, mailbox: int = 100_000) -> RuntimeConfig:
    return RuntimeConfig(
        monitor_isolation="process",
        monitor=MonitorConfig(check_interval=0.05, audit_interval=0),
        # Fast heartbeats: a blocked worker is taken for stuck within a fraction of a second.
        monitor_process=ProcessIsolation(heartbeat_interval=0.05, heartbeat_timeout=0.3, nice=10),
        supervision=SupervisionSettings(monitor_handler_timeout=handler_timeout),
        monitor_mailbox=mailbox,
    )


def worker_pid(ref: ActorRef[Any]) -> int:
    host = ref.current_instance
    assert isinstance(host, ProcessHost)
    assert host.pid is not None
    return host.pid


def monitor_failures(runtime: Runtime) -> list[str]:
    return [
        e.reason for e in runtime.events.history() if e.child_id == "monitor" and e.kind is SupervisorEventKind.FAILED
    ]


async def inject(runtime: Runtime, fault: RuntimeFault, history: FaultHistory) -> ProcessFaultOutcome:
    with anyio.fail_after(GUARD):
        return await inject_into_process_monitor(runtime, fault, history=history)


@pytest.mark.anyio
class TestInjectIntoProcessMonitor:
    async def test_crash_burst_worker_exits_each_time_restarted_bridge_delivers_all(self) -> None:
        history = FaultHistory()
        async with open_runtime(process_config()) as runtime:
            sink = MemorySink()
            connection = await runtime.bridge.connect(sink, principal="p")
            await runtime.bridge.subscribe(connection, "t")
            ref = runtime.monitor_ref()
            assert ref is not None
            first = worker_pid(ref)
            runtime.bridge.publish("t", "r", RunStarted(thread_id="t", run_id="r"))
            outcome = await inject(runtime, RuntimeFault(at=0, name="monitor_crash", burst=2), history)
            for n in range(20):
                runtime.bridge.publish("t", "r", TextMessageContent(message_id="m", delta=f"<{n}>"))
            with anyio.fail_after(GUARD):
                while sink.sent < 21:  # noqa: ASYNC110  # the sink counts, it does not signal
                    await anyio.sleep(0.01)
            assert seqs(sink) == list(range(1, 22))
            assert outcome.applied == 2
            assert outcome.text == "crashed the monitor 2 times in a row (worker exits)"
            assert outcome.loop_blocked == 0.0
            assert len(outcome.triggered_at) == 2
            assert ref.statistics().restarts == 2
            assert worker_pid(ref) != first
            failures = monitor_failures(runtime)
            assert len(failures) == 2
            assert all("exited with code 1" in reason for reason in failures)
            assert [r.action for r in history.select(fault="crash", target=ref.name)] == [
                "inject",
                "trigger",
                "effect",
            ] * 2
            assert [r.at for r in history.triggers("crash", ref.name)] == list(outcome.triggered_at)
            assert (await runtime.health()).ready

    async def test_hang_worker_handler_deadline_ends_it_monitor_restarted(self) -> None:
        history = FaultHistory()
        async with open_runtime(process_config(handler_timeout=0.2)) as runtime:
            ref = runtime.monitor_ref()
            assert ref is not None
            first = worker_pid(ref)
            outcome = await inject(runtime, RuntimeFault(at=0, name="monitor_hang"), history)
            assert outcome.applied == 1
            assert outcome.text == "hung the monitor (its worker's handler deadline cut it)"
            assert ref.statistics().restarts == 1
            assert worker_pid(ref) != first
            # Cut by the worker's own deadline, not taken for stuck: its loop kept running (heartbeats).
            [reason] = monitor_failures(runtime)
            assert "no heartbeat" not in reason
            [trigger] = history.triggers("hang", ref.name)
            assert trigger.detail == reason
            assert history.effects("hang", ref.name)[0].detail.startswith("restarted: worker pid")
            health = await runtime.monitor.check_health()
            assert health.instance == 2

    async def test_short_block_blocks_worker_loop_only_no_restart(self) -> None:
        history = FaultHistory()
        async with open_runtime(process_config()) as runtime:
            ref = runtime.monitor_ref()
            assert ref is not None
            first = worker_pid(ref)
            # Shorter than the heartbeat timeout (0.3 s): the worker's loop stalls and comes back.
            outcome = await inject(runtime, RuntimeFault(at=0, name="monitor_block", seconds=0.1), history)
            assert outcome.applied == 1
            assert outcome.loop_blocked == 0.0
            assert "blocked the monitor's worker loop for 0.1 s" in outcome.text
            assert ref.statistics().restarts == 0
            assert worker_pid(ref) == first
            assert monitor_failures(runtime) == []
            assert len(history.triggers("block_loop", ref.name)) == 1

    async def test_long_block_misses_heartbeats_worker_replaced(self) -> None:
        history = FaultHistory()
        async with open_runtime(process_config()) as runtime:
            ref = runtime.monitor_ref()
            assert ref is not None
            first = worker_pid(ref)
            outcome = await inject(runtime, RuntimeFault(at=0, name="monitor_block", seconds=2.0), history)
            assert outcome.applied == 1
            assert outcome.loop_blocked == 0.0
            assert "heartbeats missed, worker replaced" in outcome.text
            assert worker_pid(ref) != first
            [reason] = monitor_failures(runtime)
            assert "no heartbeat" in reason
            assert history.triggers("block_loop", ref.name)[0].detail == reason
            assert (await runtime.monitor.check_health()).instance == 2

    async def test_flood_overflows_host_mailbox_counts_drops_then_drains(self) -> None:
        history = FaultHistory()
        async with open_runtime(process_config(mailbox=200)) as runtime:
            ref = runtime.monitor_ref()
            assert ref is not None
            first = worker_pid(ref)
            outcome = await inject(runtime, RuntimeFault(at=0, name="monitor_flood", messages=1000), history)
            dropped = ref.statistics().dropped_total
            assert dropped >= 800  # 1,000 told at once into 200 slots
            assert outcome.text == f"1,000 health queries, {dropped:,} dropped by the full mailbox, drained"
            assert [r.action for r in history.select(fault="flood", target=ref.name)] == ["inject", "trigger", "effect"]
            assert ref.statistics().queued == 0
            assert worker_pid(ref) == first  # a flood fills a mailbox; it does not fail the monitor
            assert ref.statistics().restarts == 0

    async def test_task_monitor_rejected(self) -> None:
        async with open_runtime(RuntimeConfig(monitor=MonitorConfig(audit_interval=0))) as runtime:
            with pytest.raises(ValueError, match="monitor_isolation must be 'process'"):
                await inject_into_process_monitor(
                    runtime, RuntimeFault(at=0, name="monitor_crash"), history=FaultHistory()
                )

    async def test_not_a_monitor_fault_rejected(self) -> None:
        async with open_runtime(process_config()) as runtime:
            with pytest.raises(ValueError, match=r"fault\.name must be one of"):
                await inject_into_process_monitor(
                    runtime, RuntimeFault(at=0, name="lying_component"), history=FaultHistory()
                )
