from __future__ import annotations

import random
from typing import TYPE_CHECKING

import anyio
import pytest

from actors.chat._detection import DetectionThresholds
from actors.chat._events import (
    AgentEvent,
    RunFinished,
    RunStarted,
    TextMessageContent,
    TextMessageStart,
    ToolCallEnd,
    ToolCallStart,
)
from actors.chat._monitor import MonitorConfig
from supervisors._config import BridgeSettings, RuntimeConfig, SupervisionSettings
from supervisors.app import MONITOR
from supervisors.faults import (
    FaultHistory,
    Schedule,
    check_delivery,
    check_exactly_once,
    crash_once,
    record_supervision,
)
from tests.conftest import virtual_time
from tests.faults._harness import logs, report, runtime_with_clients, scaled

if TYPE_CHECKING:
    from actors.chat._anomaly import Anomaly
    from supervisors.app import Runtime

pytestmark = pytest.mark.anyio

# Figure 5: anomalies injected into the event stream while the monitor is crashed again and again, most crashes
# landing between an anomaly's cause and its detection: each is still reported exactly once, and nothing else is.
SEED = 5
PER_KIND = scaled(3)
RANDOM_CRASHES = scaled(40)
HORIZON = 8.0
THRESHOLDS = DetectionThresholds(stuck_tool_after=2.0, stale_thread_after=3.0)

Key = tuple[str, str, str | None, str | None]
Step = tuple[float, str, str, AgentEvent | None]  # (offset, thread, run, event); event None: crash the monitor


def scenario(kind: str, thread: str, start: float) -> tuple[list[Step], Key]:
    """One anomaly of ``kind`` on its own thread from ``start``, with a monitor crash between cause and report."""
    run = "r1"
    call = f"{thread}:call"
    crash: Step = (start + 0.5, thread, run, None)
    began = RunStarted(thread_id=thread, run_id=run)
    done = RunFinished(thread_id=thread, run_id=run)
    text = TextMessageContent(message_id=f"{thread}:m", delta="...")
    steps: list[Step]
    tool: str | None = None
    if kind == "missing_agent_started":
        steps = [
            (start, thread, run, TextMessageStart(message_id=f"{thread}:m")),
            crash,
            (start + 1, thread, run, done),
        ]
    elif kind == "orphan_tool_completed":
        steps = [(start, thread, run, began), (start + 0.2, thread, run, ToolCallEnd(tool_call_id=call)), crash]
        steps.append((start + 1, thread, run, done))
        tool = call
    elif kind == "stuck_tool":
        start_call = ToolCallStart(tool_call_id=call, tool_call_name="search")
        steps = [(start, thread, run, began), (start + 0.2, thread, run, start_call), crash]
        steps += [(start + 1.5, thread, run, None), (start + 2.5, thread, run, ToolCallEnd(tool_call_id=call))]
        steps.append((start + 2.6, thread, run, done))
        tool = call
    elif kind == "duplicate_completion":
        steps = [(start, thread, run, began), (start + 0.2, thread, run, done), crash, (start + 1, thread, run, done)]
    elif kind == "event_after_completion":
        steps = [(start, thread, run, began), (start + 0.2, thread, run, done), crash, (start + 1, thread, run, text)]
    elif kind == "stale_thread":
        steps = [(start, thread, run, began), (start + 0.2, thread, run, text), crash, (start + 2.5, thread, run, None)]
    else:
        raise AssertionError(kind)
    return steps, (kind, thread, run, tool)


KINDS = (
    "missing_agent_started",
    "orphan_tool_completed",
    "stuck_tool",
    "duplicate_completion",
    "event_after_completion",
    "stale_thread",
)


def plan(seed: int) -> tuple[list[Step], list[Key]]:
    rng = random.Random(seed)
    steps: list[Step] = []
    expected: list[Key] = []
    for kind in KINDS:
        for index in range(PER_KIND):
            more, key = scenario(kind, f"{kind}-{index}", rng.uniform(0.0, HORIZON - 3.0))
            steps += more
            expected.append(key)
    # Healthy runs on threads of their own throughout: they must raise nothing, crashes or not.
    for index in range(10):
        thread = f"healthy-{index}"
        for run_index in range(int(HORIZON)):
            at = run_index + rng.uniform(0.0, 0.5)
            run = f"r{run_index}"
            steps += [
                (at, thread, run, RunStarted(thread_id=thread, run_id=run)),
                (at + 0.1, thread, run, TextMessageContent(message_id=f"{run}:m", delta="hi")),
                (at + 0.2, thread, run, RunFinished(thread_id=thread, run_id=run)),
            ]
    steps += [(offset, "-", "-", None) for offset in Schedule.random(seed, count=RANDOM_CRASHES, horizon=HORIZON).times]
    steps.sort(key=lambda step: step[0])
    return steps, expected


async def play(runtime: Runtime, steps: list[Step], history: FaultHistory) -> int:
    origin = anyio.current_time()
    crashes = 0
    for offset, thread, run, event in steps:
        await anyio.sleep_until(origin + offset)
        if event is None:
            crashes += await crash_once(runtime.system, MONITOR, history=history)
        else:
            runtime.bridge.publish(thread, run, event)
    return crashes


class TestDetectionUnderFaults:
    @virtual_time
    async def test_monitor_crashed_mid_anomaly_each_anomaly_reported_exactly_once(self) -> None:
        steps, expected = plan(SEED)
        history = FaultHistory()
        alerts: list[Anomaly] = []
        config = RuntimeConfig(
            bridge=BridgeSettings(tick_interval=0.05),
            monitor=MonitorConfig(thresholds=THRESHOLDS, check_interval=0.25),
            supervision=SupervisionSettings(monitor_intensity=100_000, monitor_period=1.0),
        )
        threads = sorted({thread for _, thread, _, _ in steps if thread != "-"})
        async with runtime_with_clients(config, threads, per_thread=1, history=history, sinks=[alerts.append]) as (
            runtime,
            clients,
        ):
            record_supervision(runtime.system, runtime.events, history)
            crashes = await play(runtime, steps, history)
            # Every deadline has passed (the last stale thread goes silent before HORIZON - 3 + 0.2 s).
            await anyio.sleep(THRESHOLDS.stale_thread_after + 2.0)
            restarts = runtime.system.lookup(MONITOR).statistics().restarts
            assert runtime.bridge.ref.statistics().restarts == 0
        assert crashes == len([step for step in steps if step[3] is None])
        assert restarts == crashes
        reported = [(a.kind.value, a.thread_id, a.run_id, a.tool_call_id) for a in alerts]
        check_exactly_once(reported, expected, check="alerts").raise_for_problems()
        check_delivery(logs(clients)).raise_for_problems()
        report(
            "fig5", anomalies=len(expected), alerts=len(alerts), crashes=crashes, events=sum(1 for s in steps if s[3])
        )
