# The bridge taps each run of publishes it routes in one hand-off (MonitorTap): what a run looks like from the
# monitor's side, and what happens to a run that does not fit below the shedding mark or reaches a stopped monitor.
from __future__ import annotations

from typing import Any

import anyio
import pytest

from actors import MailboxSpec
from actors.chat._bridge_messages import BridgeConfig
from actors.chat._events import (
    LIFECYCLE_EVENT_TYPES,
    AgentEvent,
    RunFinished,
    RunStarted,
    TextMessageContent,
    ToolCallEnd,
    ToolCallStart,
)
from tests.behaviour.test_bridge_support import TapRecorder, open_bridge, spawn_recorder, stamped_events, until

pytestmark = pytest.mark.anyio

#: No tick during a test: the monitor's state is then only what the run itself finds.
NO_TICK = 3600.0


def run_events(deltas: int) -> list[AgentEvent]:
    return [
        RunStarted(thread_id="t", run_id="r"),
        *(TextMessageContent(message_id="m", delta=f"<{i}>") for i in range(deltas)),
        ToolCallStart(tool_call_id="c", tool_call_name="search"),
        ToolCallEnd(tool_call_id="c"),
        RunFinished(thread_id="t", run_id="r"),
    ]


async def parked(recorder: Any) -> anyio.Event:
    """Park the recorder in a handler, so that the taps told meanwhile stay in its mailbox."""
    gate = anyio.Event()
    recorder.tell(("block", gate))
    await until(lambda: recorder.statistics().queued == 0)
    return gate


class TestRunOfTaps:
    async def test_run_of_publishes_each_event_one_message_in_order(self) -> None:
        async with open_bridge(BridgeConfig(tick_interval=NO_TICK, health_window=NO_TICK)) as (system, bridge):
            recorder, log = spawn_recorder(system, capacity=1000)
            bridge.attach_monitor(recorder)
            gate = await parked(recorder)
            events = run_events(50)
            for event in events:  # told before the bridge runs: one run of publishes
                bridge.publish("t", "r", event)
            await until(lambda: recorder.statistics().queued == len(events))
            assert recorder.statistics().mailbox.sent == 1 + len(events)  # one message per event, not per run
            gate.set()
            await until(lambda: len(stamped_events(log)) == len(events))
            metrics = await bridge.get_metrics()
        assert [tap.seq for tap in stamped_events(log)] == list(range(1, len(events) + 1))
        assert [type(tap.event) for tap in stamped_events(log)] == [type(event) for event in events]
        assert (metrics.taps, metrics.taps_shed, metrics.dropped.get("monitor_tap", 0)) == (len(events), 0, 0)

    async def test_run_past_the_shedding_mark_sheds_content_keeps_every_lifecycle_event(self) -> None:
        # A monitor mailbox of 20 with 5 reserved; shedding from 10 queued. A run of 19 cannot go in whole: the
        # first 10 are told, then the 6 remaining deltas are shed and the 3 lifecycle events still go in.
        config = BridgeConfig(tick_interval=NO_TICK, health_window=NO_TICK, tap_shed_at=0.5)
        async with open_bridge(config) as (system, bridge):
            log: list[Any] = []
            recorder = system.spawn(lambda: TapRecorder(log), mailbox=MailboxSpec(capacity=20, reserved=5))
            bridge.attach_monitor(recorder)
            gate = await parked(recorder)
            events = run_events(15)
            for event in events:
                bridge.publish("t", "r", event)
            await until(lambda: recorder.statistics().queued == 13)
            gate.set()
            await until(lambda: len(stamped_events(log)) == 13)
            metrics = await bridge.get_metrics()
        tapped = stamped_events(log)
        assert [tap.seq for tap in tapped] == [*range(1, 11), 17, 18, 19]
        assert all(type(tap.event) in LIFECYCLE_EVENT_TYPES for tap in tapped[10:])
        assert (metrics.taps, metrics.taps_shed, metrics.dropped["monitor_tap"]) == (13, 6, 6)
        assert metrics.events_accepted == metrics.taps + metrics.taps_shed

    async def test_stopped_monitor_run_and_single_taps_counted_lost(self) -> None:
        # Between two ticks the bridge still taps a monitor that has stopped: the taps are dead letters, each
        # counted lost, whether a run of one (a tell) or a longer run (tell_many).
        async with open_bridge(BridgeConfig(tick_interval=NO_TICK, health_window=NO_TICK)) as (system, bridge):
            recorder, log = spawn_recorder(system, capacity=1000)
            bridge.attach_monitor(recorder)
            await bridge.get_metrics()  # the attach is handled
            await recorder.stop()
            bridge.publish("t", "r", RunStarted(thread_id="t", run_id="r"))
            await bridge.get_metrics()  # handled alone: a run of one
            for i in range(3):
                bridge.publish("t", "r", TextMessageContent(message_id="m", delta=f"<{i}>"))
            metrics = await bridge.get_metrics()
        assert (metrics.taps, metrics.dropped["monitor_tap"]) == (4, 4)
        assert log == []
