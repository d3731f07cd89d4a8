from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from actors.chat._anomaly import AnomalyKind
from actors.chat._connection import MemorySink
from actors.chat._detection import DetectionThresholds
from actors.chat._events import RunStarted, TextMessageContent, ToolCallStart
from actors.chat._monitor import MonitorConfig
from actors.process import ProcessFault, ProcessHost, ProcessIsolation
from supervisors import RuntimeConfig, SupervisorEventKind
from supervisors.app import open_runtime
from tests.behaviour.test_bridge_support import seqs

if TYPE_CHECKING:
    from collections.abc import Callable

    from actors.chat._anomaly import Anomaly
    from supervisors.app import Runtime

ROOT = Path(__file__).resolve().parents[2]
GUARD = 20.0

# A parent process that runs one process-isolated actor, prints its worker's pid and waits to be killed.
PARENT = """
import sys, anyio
from actors import open_actor_system
from actors.process import ActorRecipe, ProcessFault, ProcessHost, ProcessIsolation
from tests.behaviour._process_kit import Journal

async def main(backend_fault):
    async with open_actor_system() as system:
        await system.start(Journal, name="journal")
        recipe = ActorRecipe("tests.behaviour._process_kit:build_counter", 0, "journal")
        options = ProcessIsolation(heartbeat_interval=1.0, heartbeat_timeout=60.0)
        ref = await system.start(lambda: ProcessHost(recipe, options), name="counter")
        if backend_fault == "spin":
            ref.tell(ProcessFault(kind="spin"))
        print(ref.current_instance.pid, flush=True)
        await anyio.sleep_forever()

anyio.run(main, sys.argv[2], backend=sys.argv[1])
"""


def state_of(pid: int) -> str | None:
    """The process's state letter from /proc (``R``, ``S``, ``Z``...), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def worker_pid(host: Any) -> int:
    assert isinstance(host, ProcessHost)
    assert host.pid is not None
    return host.pid


async def wait_for(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(GUARD):  # a guard against a hang, not a timing assertion
        while not predicate():  # noqa: ASYNC110  # polling real processes
            await anyio.sleep(0.01)


class TestNoOrphan:
    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    @pytest.mark.parametrize("fault", ["idle", "spin"])
    def test_sigkilled_parent_worker_exits_even_while_spinning(self, backend: str, fault: str) -> None:
        with subprocess.Popen(
            [sys.executable, "-c", PARENT, backend, fault],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        ) as parent:
            try:
                assert parent.stdout is not None
                worker = int(parent.stdout.readline())
                assert state_of(worker) is not None
                if fault == "spin":
                    deadline = time.monotonic() + GUARD
                    while state_of(worker) != "R" and time.monotonic() < deadline:  # it spins: always runnable
                        time.sleep(0.01)
                os.kill(parent.pid, signal.SIGKILL)
                assert parent.wait(timeout=GUARD) == -signal.SIGKILL
                deadline = time.monotonic() + GUARD
                # Gone, or a zombie waiting for init to reap it: either way it no longer runs.
                while state_of(worker) not in (None, "Z") and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert state_of(worker) in (None, "Z")
            finally:
                if parent.poll() is None:
                    parent.kill()


def process_config(**thresholds: Any) -> RuntimeConfig:
    monitor = MonitorConfig(check_interval=0.05, audit_interval=0, thresholds=DetectionThresholds(**thresholds))
    # Fast heartbeats: a spinning monitor is found within a fraction of a second.
    process = ProcessIsolation(heartbeat_interval=0.05, heartbeat_timeout=0.3)
    return RuntimeConfig(monitor_isolation="process", monitor=monitor, monitor_process=process)


def monitor_events(runtime: Runtime, kind: SupervisorEventKind) -> list[str]:
    return [e.reason for e in runtime.events.history() if e.child_id == "monitor" and e.kind is kind]


@pytest.mark.anyio
class TestProcessMonitor:
    async def test_detects_stuck_tool_rebuilds_after_kill_reports_each_once(self) -> None:
        alerts: list[Anomaly] = []

        def stuck() -> list[str | None]:
            return [a.tool_call_id for a in alerts if a.kind is AnomalyKind.STUCK_TOOL]

        async with open_runtime(process_config(stuck_tool_after=0.3), sinks=[alerts.append]) as runtime:
            ref = runtime.monitor_ref()
            assert ref is not None
            first = worker_pid(ref.current_instance)
            runtime.bridge.publish("t1", "r1", RunStarted(thread_id="t1", run_id="r1"))
            runtime.bridge.publish("t1", "r1", ToolCallStart(tool_call_id="c1", tool_call_name="search"))
            await wait_for(lambda: stuck() == ["c1"])
            os.kill(first, signal.SIGKILL)
            await wait_for(lambda: bool(monitor_events(runtime, SupervisorEventKind.RESTARTED)))
            assert "killed by SIGKILL" in monitor_events(runtime, SupervisorEventKind.FAILED)[0]
            runtime.bridge.publish("t2", "r2", RunStarted(thread_id="t2", run_id="r2"))
            runtime.bridge.publish("t2", "r2", ToolCallStart(tool_call_id="c2", tool_call_name="search"))
            await wait_for(lambda: "c2" in stuck())
            # c1 was not reported again by the rebuilt monitor: the memory of what was reported lives in the parent.
            assert stuck() == ["c1", "c2"]
            health = await runtime.monitor.check_health()
            assert health.instance == 2
            assert health.runs_in_flight == 2  # r1 rebuilt from the bridge's replay ring, r2 seen live
            summary = await runtime.monitor.get_component_audit_summary()
            assert summary.total_components == 1  # the bridge's registration survived the kill
            assert worker_pid(ref.current_instance) != first

    async def test_spinning_monitor_bridge_keeps_delivering_monitor_replaced(self) -> None:
        async with open_runtime(process_config()) as runtime:
            sink = MemorySink()
            connection = await runtime.bridge.connect(sink, principal="p")
            await runtime.bridge.subscribe(connection, "t")
            ref = runtime.monitor_ref()
            assert ref is not None
            first = worker_pid(ref.current_instance)
            runtime.bridge.publish("t", "r", RunStarted(thread_id="t", run_id="r"))
            ref.tell(ProcessFault(kind="spin"))
            published = 1
            at_detection: tuple[int, int] | None = None
            while at_detection is None or published < at_detection[0] + 50:
                runtime.bridge.publish("t", "r", TextMessageContent(message_id="m", delta=f"<{published}>"))
                published += 1
                await anyio.sleep(0.005)
                if at_detection is None and monitor_events(runtime, SupervisorEventKind.FAILED):
                    at_detection = (published, sink.sent)
            await wait_for(lambda: sink.sent == published)
            assert seqs(sink) == list(range(1, published + 1))
            assert at_detection is not None
            # While the monitor's process spun (until its heartbeats were missed), the bridge went on delivering:
            # everything published by then was delivered by then, but the last few events still in flight.
            assert at_detection[1] >= at_detection[0] - 5
            assert "no heartbeat" in monitor_events(runtime, SupervisorEventKind.FAILED)[0]
            await wait_for(lambda: bool(monitor_events(runtime, SupervisorEventKind.RESTARTED)))
            assert worker_pid(ref.current_instance) != first
            assert (await runtime.health()).ready
