from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from actors import virtual_time_backend
from actors.chat._detection import DetectionThresholds
from actors.chat._events import TextMessageContent, ToolCallStart
from actors.chat._monitor import MonitorConfig
from supervisors._config import BridgeSettings, RuntimeConfig, SupervisionSettings
from supervisors.app import MONITOR
from supervisors.faults import FaultHistory, Schedule, crash_once, run_schedule
from tests.faults._harness import Workload, all_received, report, runtime_with_clients

if TYPE_CHECKING:
    from actors.chat._anomaly import Anomaly

# Figure 10: the same seed gives the same run, to the frame and to the millisecond, on asyncio and on trio (both on
# the virtual clock): every client's deliveries and closes, and the alerts. The scenario mixes what the other
# figures do one at a time: load, monitor crashes, a slow client closed with 4001 that resumes, and anomalies.
SEED = 10
CONFIG = RuntimeConfig(
    bridge=BridgeSettings(tick_interval=0.05, writer_queue_capacity=32, slow_consumer_after=0.5),
    monitor=MonitorConfig(thresholds=DetectionThresholds(stuck_tool_after=1.0), check_interval=0.25),
    supervision=SupervisionSettings(monitor_intensity=100_000, monitor_period=1.0),
)


async def scenario(seed: int) -> dict[str, Any]:
    """Run the seeded scenario; return everything observable, with times relative to its start."""
    workload = Workload(seed, threads=6, events_per_thread=150)
    history = FaultHistory()
    alerts: list[Anomaly] = []
    async with runtime_with_clients(CONFIG, workload.threads, per_thread=3, history=history, sinks=[alerts.append]) as (
        runtime,
        clients,
    ):
        origin = anyio.current_time()
        slow = clients[0]
        slow.read_slowly(20.0)
        # Anomalies the monitor must report: a run with no start, and a tool call that never ends.
        runtime.bridge.publish("anomalies", "r1", TextMessageContent(message_id="m", delta="no start"))
        runtime.bridge.publish("anomalies", "r2", ToolCallStart(tool_call_id="stuck", tool_call_name="search"))
        schedule = Schedule.random(seed, count=20, horizon=2.0, min_gap=0.02)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: workload.drive(runtime, rate=450.0))
            tg.start_soon(lambda: run_schedule(schedule, lambda _: crash_once(runtime.system, MONITOR)))
            await slow.wait_closed(timeout=30.0)
            await slow.resume()
        await all_received(clients, workload)
        # Shut down at a fixed time (the polls above notice at a step that may differ by backend), after the stuck
        # tool's deadline.
        await anyio.sleep_until(origin + 8.0)
    return {
        "deliveries": {
            client.name: [
                (d.connection_id, d.thread_id, d.seq, d.first_seq, d.type, round(d.at - origin, 6))
                for d in client.log.deliveries
            ]
            for client in clients
        },
        "closes": {
            client.name: [(c.connection_id, c.code, round(c.at - origin, 6)) for c in client.log.closes]
            for client in clients
        },
        "alerts": sorted(
            (a.kind.value, a.thread_id, a.run_id, a.tool_call_id, a.seq, a.window_start, a.detected_at) for a in alerts
        ),
        # Within one instant the order in which actors' records interleave is the scheduler's (trio shuffles it on
        # purpose): the history is compared as what happened at each instant.
        "faults": sorted((round(r.at - origin, 6), r.action, r.fault, r.target, r.detail) for r in history.records),
    }


def run_on(backend: str, seed: int = SEED) -> dict[str, Any]:
    name, options = virtual_time_backend(backend)
    result: dict[str, Any] = anyio.run(scenario, seed, backend=name, backend_options=options)
    return result


class TestDeterminism:
    def test_same_seed_identical_deliveries_closes_and_alerts_on_asyncio_and_trio(self) -> None:
        on_asyncio = run_on("asyncio")
        on_trio = run_on("trio")
        # The scenario did what it says: a 4001 close and a resume, crashes, and alerts.
        assert any(code == 4001 for closes in on_asyncio["closes"].values() for _, code, _ in closes)
        assert {alert[0] for alert in on_asyncio["alerts"]} >= {"missing_agent_started", "stuck_tool"}
        for key in ("deliveries", "closes", "alerts", "faults"):
            assert on_asyncio[key] == on_trio[key], key
        report(
            "fig10",
            clients=len(on_asyncio["deliveries"]),
            deliveries=sum(len(d) for d in on_asyncio["deliveries"].values()),
            alerts=len(on_asyncio["alerts"]),
            history_lines=len(on_asyncio["faults"]),
            identical=True,
        )

    def test_same_seed_twice_on_one_backend_identical(self) -> None:
        assert run_on("trio") == run_on("trio")
        assert run_on("asyncio", SEED + 1) == run_on("asyncio", SEED + 1)

    def test_other_seed_differs(self) -> None:
        # Regression guard for the comparison itself: a different seed is a different run.
        assert run_on("asyncio", SEED)["deliveries"] != run_on("asyncio", SEED + 1)["deliveries"]
