from __future__ import annotations

import gc
import json
import random
import tracemalloc
import weakref
from typing import Any

import msgspec
import pytest

from actors.chat import _detection as detection_module
from actors.chat._aliases import agent_completed, agent_started, tool_completed, tool_executing
from actors.chat._anomaly import ALL_THREADS, Anomaly, AnomalyKind, ReportedKeys, Severity
from actors.chat._deadlines import DeadlineHeap
from actors.chat._detection import DetectionThresholds, RunTracker
from actors.chat._events import (
    AgentEvent,
    Custom,
    RunError,
    RunFinished,
    RunStarted,
    StampedEvent,
    StepStarted,
    TextMessageContent,
    TextMessageStart,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallResult,
    ToolCallStart,
    parse_event,
)
from actors.chat._finished_runs import FinishedRuns
from actors.chat._monitor import MonitorConfig, MonitorMemory

T0 = 1_700_000_000_000  # ms on the runtime clock; any non-negative value works
STUCK_MS = 30_000
STALE_MS = 60_000
LATENCY_MS = 2_000
UNDELIVERED_MS = 5_000
RETENTION_MS = 300_000
BURST_WINDOW_MS = 60_000


def stamped(event: AgentEvent, *, at: int = T0, thread: str = "t1", run: str = "r1", seq: int = 1) -> StampedEvent:
    return StampedEvent(thread_id=thread, run_id=run, seq=seq, observed_at=at, event=event, frame=b"")


def routed(event: AgentEvent, *, at: int = T0, thread: str = "t1", run: str = "r1", seq: int = 1) -> StampedEvent:
    """As the bridge taps an event it routed to one connection."""
    return StampedEvent(thread_id=thread, run_id=run, seq=seq, observed_at=at, event=event, frame=b"", fan_out=1)


def started(thread: str = "t1", run: str = "r1") -> RunStarted:
    return RunStarted(thread_id=thread, run_id=run)


def finished(thread: str = "t1", run: str = "r1") -> RunFinished:
    return RunFinished(thread_id=thread, run_id=run)


def text(timestamp: int | None = None) -> TextMessageContent:
    return TextMessageContent(message_id="m1", delta="hi", timestamp=timestamp)


def tool_start(call: str = "c1") -> ToolCallStart:
    return ToolCallStart(tool_call_id=call, tool_call_name="search")


def feed(tracker: RunTracker, *items: tuple[AgentEvent, int], thread: str = "t1", run: str = "r1") -> list[Anomaly]:
    """Observe events of one run at the given times; return every anomaly they revealed."""
    found: list[Anomaly] = []
    for seq, (event, at) in enumerate(items, start=1):
        found += tracker.observe(stamped(event, at=at, thread=thread, run=run, seq=seq))
    return found


def kinds(anomalies: Any) -> list[AnomalyKind]:
    return [anomaly.kind for anomaly in anomalies]


class TestDetectionThresholds:
    def test_thresholds_defaults_match_the_documented_values(self) -> None:
        thresholds = DetectionThresholds()
        assert (
            thresholds.stuck_tool_after,
            thresholds.stale_thread_after,
            thresholds.high_latency_after,
            thresholds.error_burst_count,
            thresholds.error_burst_window,
            thresholds.undelivered_after,
            thresholds.retention,
            thresholds.max_tracked_runs,
        ) == (30.0, 60.0, 2.0, 5, 60.0, 5.0, 300.0, 100_000)

    @pytest.mark.parametrize(
        "field",
        [
            "stuck_tool_after",
            "stale_thread_after",
            "high_latency_after",
            "error_burst_window",
            "undelivered_after",
            "retention",
        ],
    )
    @pytest.mark.parametrize("value", [0, -1.5, float("inf"), float("nan"), True, "30"])
    def test_thresholds_bad_duration_raises_naming_the_field(self, field: str, value: object) -> None:
        with pytest.raises(ValueError, match=f"^{field} must be a positive finite number"):
            DetectionThresholds(**{field: value})  # type: ignore[arg-type]

    @pytest.mark.parametrize("field", ["error_burst_count", "max_tracked_runs"])
    @pytest.mark.parametrize("value", [0, -3, 2.5, True])
    def test_thresholds_bad_count_raises_naming_the_field(self, field: str, value: object) -> None:
        with pytest.raises(ValueError, match=f"^{field} must be a positive int"):
            DetectionThresholds(**{field: value})  # type: ignore[arg-type]

    def test_thresholds_decoded_from_json_are_validated(self) -> None:
        with pytest.raises(msgspec.ValidationError, match="retention"):
            msgspec.json.decode(b'{"retention": -1}', type=DetectionThresholds)


class TestMissingAgentStarted:
    def test_missing_start_first_event_not_run_started_is_reported_once(self) -> None:
        tracker = RunTracker()
        found = feed(tracker, (TextMessageStart(message_id="m1"), T0), (text(), T0 + 10), (text(), T0 + 20))
        assert len(found) == 1
        (anomaly,) = found
        assert anomaly.kind is AnomalyKind.MISSING_AGENT_STARTED
        assert anomaly.severity is Severity.WARNING
        assert (anomaly.thread_id, anomaly.run_id, anomaly.tool_call_id) == ("t1", "r1", None)
        assert anomaly.detected_at == T0
        assert "TEXT_MESSAGE_START" in anomaly.detail

    def test_missing_start_lone_run_finished_is_reported_and_the_run_is_retained(self) -> None:
        # The seed's fifth scenario, which it called "expected behaviour".
        tracker = RunTracker()
        found = feed(tracker, (finished(), T0))
        assert kinds(found) == [AnomalyKind.MISSING_AGENT_STARTED]
        assert "RUN_FINISHED" in found[0].detail
        stats = tracker.statistics()
        assert (stats.runs_in_flight, stats.runs_retained) == (0, 1)
        assert kinds(tracker.observe(stamped(finished(), at=T0 + 5, seq=2))) == [AnomalyKind.DUPLICATE_COMPLETION]

    def test_missing_start_lone_run_error_is_reported(self) -> None:
        tracker = RunTracker()
        assert kinds(feed(tracker, (RunError(message="boom"), T0))) == [AnomalyKind.MISSING_AGENT_STARTED]

    def test_missing_start_run_is_then_tracked_in_flight_and_can_go_stale(self) -> None:
        tracker = RunTracker()
        feed(tracker, (text(), T0))
        assert tracker.statistics().runs_in_flight == 1
        assert kinds(tracker.advance(T0 + STALE_MS)) == [AnomalyKind.STALE_THREAD]

    def test_missing_start_run_started_first_reports_nothing(self) -> None:
        tracker = RunTracker()
        assert feed(tracker, (started(), T0), (text(), T0 + 1), (finished(), T0 + 2)) == []

    def test_missing_start_is_per_run_not_per_thread(self) -> None:
        tracker = RunTracker()
        feed(tracker, (started(run="r1"), T0), (finished(run="r1"), T0 + 1), run="r1")
        assert feed(tracker, (started(run="r2"), T0 + 2), run="r2") == []
        found = feed(tracker, (text(), T0 + 3), run="r3")
        assert [(a.kind, a.run_id) for a in found] == [(AnomalyKind.MISSING_AGENT_STARTED, "r3")]


class TestOrphanToolCompleted:
    @pytest.mark.parametrize(
        "closing",
        [ToolCallEnd(tool_call_id="ghost"), ToolCallResult(message_id="m9", tool_call_id="ghost", content="x")],
    )
    def test_orphan_close_of_a_never_started_call_is_reported(self, closing: AgentEvent) -> None:
        tracker = RunTracker()
        found = feed(tracker, (started(), T0), (closing, T0 + 7))
        assert len(found) == 1
        (anomaly,) = found
        assert anomaly.kind is AnomalyKind.ORPHAN_TOOL_COMPLETED
        assert (anomaly.run_id, anomaly.tool_call_id, anomaly.detected_at) == ("r1", "ghost", T0 + 7)

    def test_orphan_end_then_result_of_the_same_unknown_call_reports_once(self) -> None:
        tracker = RunTracker()
        found = feed(
            tracker,
            (started(), T0),
            (ToolCallEnd(tool_call_id="ghost"), T0 + 1),
            (ToolCallResult(message_id="m2", tool_call_id="ghost", content="x"), T0 + 2),
        )
        assert kinds(found) == [AnomalyKind.ORPHAN_TOOL_COMPLETED]

    def test_orphan_result_after_end_of_a_started_call_is_normal(self) -> None:
        tracker = RunTracker()
        found = feed(
            tracker,
            (started(), T0),
            (tool_start(), T0 + 1),
            (ToolCallArgs(tool_call_id="c1", delta="{}"), T0 + 2),
            (ToolCallEnd(tool_call_id="c1"), T0 + 3),
            (ToolCallResult(message_id="m2", tool_call_id="c1", content="ok"), T0 + 4),
            (finished(), T0 + 5),
        )
        assert found == []

    def test_orphan_call_started_in_another_run_is_an_orphan_here(self) -> None:
        tracker = RunTracker()
        feed(tracker, (started(run="r1"), T0), (tool_start(), T0 + 1), run="r1")
        found = feed(tracker, (started(run="r2"), T0 + 2), (ToolCallEnd(tool_call_id="c1"), T0 + 3), run="r2")
        assert [(a.kind, a.run_id) for a in found] == [(AnomalyKind.ORPHAN_TOOL_COMPLETED, "r2")]


def result(call: str = "c1") -> ToolCallResult:
    return ToolCallResult(message_id=f"{call}-result", tool_call_id=call, content="ok")


def seed_frame(**fields: object) -> AgentEvent:
    """Decode a seed object as it comes in over the wire (the alias parser keeps it as rawEvent)."""
    return parse_event(json.dumps(fields))


class TestStuckTool:
    def test_stuck_tool_is_reported_exactly_at_the_threshold(self) -> None:
        tracker = RunTracker()
        feed(tracker, (started(), T0), (tool_start(), T0 + 100))
        assert tracker.next_deadline() == T0 + 100 + STUCK_MS
        assert tracker.advance(T0 + 100 + STUCK_MS - 1) == ()
        found = tracker.advance(T0 + 100 + STUCK_MS)
        assert len(found) == 1
        (anomaly,) = found
        assert anomaly.kind is AnomalyKind.STUCK_TOOL
        assert anomaly.severity is Severity.CRITICAL
        assert (anomaly.run_id, anomaly.tool_call_id, anomaly.detected_at) == ("r1", "c1", T0 + 100 + STUCK_MS)
        assert "no TOOL_CALL_END or TOOL_CALL_RESULT" in anomaly.detail

    def test_stuck_tool_long_call_whose_result_comes_in_time_is_not_reported(self) -> None:
        tracker = RunTracker()
        feed(
            tracker,
            (started(), T0),
            (tool_start(), T0),
            (ToolCallEnd(tool_call_id="c1"), T0 + 10),
            (result(), T0 + STUCK_MS - 1),
        )
        assert tracker.advance(T0 + STALE_MS - 1) == ()

    def test_stuck_tool_result_at_the_threshold_is_too_late(self) -> None:
        tracker = RunTracker()
        feed(tracker, (started(), T0), (tool_start(), T0), (ToolCallEnd(tool_call_id="c1"), T0 + 10))
        assert kinds(tracker.advance(T0 + STUCK_MS)) == [AnomalyKind.STUCK_TOOL]
        # The late RESULT is neither an orphan nor a second report.
        assert tracker.observe(stamped(result(), at=T0 + STUCK_MS, seq=4)) == ()
        assert tracker.advance(T0 + STUCK_MS + STALE_MS - 1) == ()

    def test_stuck_tool_result_without_end_closes_the_call(self) -> None:
        tracker = RunTracker()
        feed(tracker, (started(), T0), (tool_start(), T0), (result(), T0 + 10), (finished(), T0 + 20))
        assert tracker.advance(T0 + 10 * RETENTION_MS) == ()

    def test_stuck_tool_server_side_call_hung_after_its_end_is_reported(self) -> None:
        # The arguments are complete, the tool is executing, and no result ever comes while the run goes on.
        tracker = RunTracker()
        feed(
            tracker,
            (started(), T0),
            (tool_start(), T0),
            (ToolCallArgs(tool_call_id="c1", delta="{}"), T0 + 5),
            (ToolCallEnd(tool_call_id="c1"), T0 + 10),
            (text(), T0 + STUCK_MS - 1),
        )
        assert tracker.next_deadline() == T0 + STUCK_MS
        assert tracker.advance(T0 + STUCK_MS - 1) == ()
        found = tracker.advance(T0 + STUCK_MS)
        assert [(a.kind, a.tool_call_id, a.detected_at) for a in found] == [
            (AnomalyKind.STUCK_TOOL, "c1", T0 + STUCK_MS)
        ]
        assert "had its TOOL_CALL_END but no TOOL_CALL_RESULT" in found[0].detail

    @pytest.mark.parametrize("ending", [finished(), RunError(message="cancelled")])
    def test_stuck_tool_client_side_call_closed_by_its_run_finishing_is_not_reported(self, ending: AgentEvent) -> None:
        # START, ARGS, END, then the run ends without a RESULT: the client executes the tool after the run.
        tracker = RunTracker()
        feed(
            tracker,
            (started(), T0),
            (tool_start(), T0 + 1),
            (ToolCallArgs(tool_call_id="c1", delta="{}"), T0 + 2),
            (ToolCallEnd(tool_call_id="c1"), T0 + 3),
            (ending, T0 + 4),
        )
        # Only the finished run's expiry is left: the call no longer holds the run past its retention either.
        assert tracker.statistics().pending_deadlines == 1
        assert tracker.next_deadline() == T0 + 4 + RETENTION_MS
        assert tracker.advance(T0 + 10 * RETENTION_MS) == ()

    def test_stuck_tool_client_side_run_finishing_just_before_the_threshold_is_not_reported(self) -> None:
        tracker = RunTracker()
        feed(tracker, (started(), T0), (tool_start(), T0), (ToolCallEnd(tool_call_id="c1"), T0 + 1))
        assert tracker.advance(T0 + STUCK_MS - 1) == ()
        tracker.observe(stamped(finished(), at=T0 + STUCK_MS - 1, seq=4))
        assert tracker.advance(T0 + 10 * RETENTION_MS) == ()

    def test_stuck_tool_run_finishing_at_the_threshold_is_too_late(self) -> None:
        tracker = RunTracker()
        feed(tracker, (started(), T0), (tool_start(), T0), (ToolCallEnd(tool_call_id="c1"), T0 + 1))
        assert kinds(tracker.advance(T0 + STUCK_MS)) == [AnomalyKind.STUCK_TOOL]
        assert tracker.observe(stamped(finished(), at=T0 + STUCK_MS, seq=4)) == ()
        assert tracker.advance(T0 + 10 * RETENTION_MS) == ()

    def test_stuck_tool_repeated_end_leaves_the_call_awaiting_its_result(self) -> None:
        tracker = RunTracker()
        end = ToolCallEnd(tool_call_id="c1")
        assert feed(tracker, (started(), T0), (tool_start(), T0), (end, T0 + 1), (end, T0 + 2)) == []
        assert [a.tool_call_id for a in tracker.advance(T0 + STUCK_MS)] == ["c1"]

    def test_stuck_tool_is_reported_once_and_a_late_end_is_not_an_orphan(self) -> None:
        tracker = RunTracker()
        feed(tracker, (started(), T0), (tool_start(), T0))
        assert kinds(tracker.advance(T0 + STUCK_MS)) == [AnomalyKind.STUCK_TOOL]
        assert tracker.observe(stamped(ToolCallEnd(tool_call_id="c1"), at=T0 + STUCK_MS + 1, seq=3)) == ()
        assert tracker.observe(stamped(result(), at=T0 + STUCK_MS + 2, seq=4)) == ()
        assert tracker.advance(T0 + STUCK_MS + STALE_MS) == ()

    def test_stuck_tool_left_open_by_a_finished_run_is_still_reported(self) -> None:
        # No END: the run ended with the call's arguments half-streamed.
        tracker = RunTracker()
        feed(tracker, (started(), T0), (tool_start(), T0), (finished(), T0 + 5))
        found = tracker.advance(T0 + STUCK_MS)
        assert kinds(found) == [AnomalyKind.STUCK_TOOL]
        assert "no TOOL_CALL_END or TOOL_CALL_RESULT (the run has finished)" in found[0].detail

    def test_stuck_tool_outliving_the_retention_is_still_reported(self) -> None:
        tracker = RunTracker(DetectionThresholds(retention=1.0))
        feed(tracker, (started(), T0), (tool_start(), T0), (finished(), T0 + 5))
        assert tracker.advance(T0 + STUCK_MS - 1) == ()
        assert tracker.statistics().runs_retained == 1
        assert kinds(tracker.advance(T0 + STUCK_MS)) == [AnomalyKind.STUCK_TOOL]
        assert tracker.statistics().runs_retained == 0

    def test_stuck_tool_each_open_call_is_reported_separately(self) -> None:
        tracker = RunTracker()
        feed(tracker, (started(), T0), (tool_start("a"), T0), (tool_start("b"), T0 + 1), (tool_start("a"), T0 + 2))
        found = tracker.advance(T0 + STUCK_MS + 1)
        assert [(a.tool_call_id, a.detected_at) for a in found] == [("a", T0 + STUCK_MS + 1), ("b", T0 + STUCK_MS + 1)]

    def test_stuck_tool_ended_call_stays_armed_until_its_result(self) -> None:
        tracker = RunTracker()
        feed(tracker, (started(), T0), (tool_start(), T0), (ToolCallEnd(tool_call_id="c1"), T0 + 1))
        assert tracker.statistics().pending_deadlines == 2
        assert tracker.next_deadline() == T0 + STUCK_MS
        tracker.observe(stamped(result(), at=T0 + 2, seq=4))
        assert tracker.statistics().pending_deadlines == 1
        assert tracker.next_deadline() == T0 + STALE_MS

    def test_stuck_tool_seed_stream_closed_by_agent_completed_is_not_reported(self) -> None:
        # The seed's Python aliases: tool_completed is a plain TOOL_CALL_END, and agent_completed closes the call.
        tracker = RunTracker()
        found = feed(
            tracker,
            (agent_started("t1", "r1"), T0),
            (tool_executing("c1", "search", thread_id="t1", run_id="r1"), T0 + 1),
            (tool_completed("c1", thread_id="t1", run_id="r1"), T0 + 2),
            (agent_completed("t1", "r1"), T0 + STUCK_MS - 1),
        )
        assert found == []
        assert tracker.advance(T0 + 10 * RETENTION_MS) == ()

    def test_stuck_tool_seed_tool_completed_then_silence_is_only_a_stale_thread(self) -> None:
        # A seed tool_completed (decoded from the wire) says the tool finished: the run that then goes silent is
        # stale, not stuck on its tool.
        tracker = RunTracker()
        found = feed(
            tracker,
            (seed_frame(type="agent_started", thread_id="t1", run_id="r1"), T0),
            (seed_frame(type="tool_executing", tool_call_id="c1", tool_name="search", run_id="r1"), T0 + 1),
            (seed_frame(type="tool_completed", tool_call_id="c1", run_id="r1", result="3 hits"), T0 + 2),
        )
        assert found == []
        assert tracker.statistics().pending_deadlines == 1
        assert tracker.advance(T0 + 2 + STALE_MS - 1) == ()
        assert kinds(tracker.advance(T0 + 2 + STALE_MS)) == [AnomalyKind.STALE_THREAD]

    def test_stuck_tool_seed_tool_completed_without_executing_is_an_orphan(self) -> None:
        tracker = RunTracker()
        found = feed(
            tracker, (started(), T0), (seed_frame(type="tool_completed", tool_call_id="ghost", run_id="r1"), T0 + 1)
        )
        assert [(a.kind, a.tool_call_id) for a in found] == [(AnomalyKind.ORPHAN_TOOL_COMPLETED, "ghost")]


class TestStaleThread:
    def test_stale_thread_is_reported_exactly_at_the_threshold(self) -> None:
        tracker = RunTracker()
        feed(tracker, (started(), T0))
        assert tracker.advance(T0 + STALE_MS - 1) == ()
        found = tracker.advance(T0 + STALE_MS)
        assert len(found) == 1
        (anomaly,) = found
        assert anomaly.kind is AnomalyKind.STALE_THREAD
        assert (anomaly.thread_id, anomaly.run_id, anomaly.detected_at) == ("t1", "r1", T0 + STALE_MS)

    def test_stale_thread_activity_postpones_the_deadline(self) -> None:
        tracker = RunTracker()
        feed(tracker, (started(), T0), (text(), T0 + 50_000))
        assert tracker.advance(T0 + STALE_MS) == ()
        assert tracker.advance(T0 + 50_000 + STALE_MS - 1) == ()
        assert kinds(tracker.advance(T0 + 50_000 + STALE_MS)) == [AnomalyKind.STALE_THREAD]

    def test_stale_thread_next_deadline_is_never_late(self) -> None:
        tracker = RunTracker()
        feed(tracker, (started(), T0), (text(), T0 + 50_000))
        found: list[Anomaly] = []
        while (deadline := tracker.next_deadline()) is not None and not found:
            found += tracker.advance(deadline)
        assert [(a.kind, a.detected_at) for a in found] == [(AnomalyKind.STALE_THREAD, T0 + 50_000 + STALE_MS)]

    def test_stale_thread_quiet_run_that_finished_is_not_reported(self) -> None:
        tracker = RunTracker()
        feed(tracker, (started(), T0), (finished(), T0 + 1))
        assert tracker.advance(T0 + 10 * RETENTION_MS) == ()

    def test_stale_thread_reported_once_then_forgotten_after_retention(self) -> None:
        tracker = RunTracker()
        feed(tracker, (started(), T0))
        assert kinds(tracker.advance(T0 + STALE_MS)) == [AnomalyKind.STALE_THREAD]
        assert tracker.advance(T0 + STALE_MS + RETENTION_MS - 1) == ()
        assert tracker.statistics().runs_in_flight == 1
        assert tracker.advance(T0 + STALE_MS + RETENTION_MS) == ()
        stats = tracker.statistics()
        assert (stats.runs_in_flight, stats.runs_abandoned) == (0, 1)
        # Forgotten: a straggler now looks like a run that never started.
        late = tracker.observe(stamped(text(), at=T0 + STALE_MS + RETENTION_MS + 1, seq=2))
        assert kinds(late) == [AnomalyKind.MISSING_AGENT_STARTED]

    def test_stale_thread_that_resumes_is_not_reported_again(self) -> None:
        tracker = RunTracker()
        feed(tracker, (started(), T0))
        assert kinds(tracker.advance(T0 + STALE_MS)) == [AnomalyKind.STALE_THREAD]
        assert tracker.observe(stamped(text(), at=T0 + STALE_MS + 1, seq=2)) == ()
        assert tracker.advance(T0 + 3 * STALE_MS) == ()
        assert tracker.observe(stamped(finished(), at=T0 + 3 * STALE_MS, seq=3)) == ()


class TestHighLatency:
    def test_high_latency_above_the_threshold_is_reported(self) -> None:
        tracker = RunTracker()
        found = feed(tracker, (started(), T0), (text(timestamp=T0 + 10 - LATENCY_MS - 1), T0 + 10))
        assert len(found) == 1
        (anomaly,) = found
        assert anomaly.kind is AnomalyKind.HIGH_LATENCY
        assert anomaly.detected_at == T0 + 10
        assert f"{LATENCY_MS + 1} ms" in anomaly.detail

    def test_high_latency_exactly_at_the_threshold_is_not_reported(self) -> None:
        tracker = RunTracker()
        assert feed(tracker, (started(), T0), (text(timestamp=T0 + 10 - LATENCY_MS), T0 + 10)) == []

    def test_high_latency_event_without_timestamp_is_skipped(self) -> None:
        tracker = RunTracker()
        assert feed(tracker, (started(), T0 + 10 * LATENCY_MS), (text(timestamp=None), T0 + 10 * LATENCY_MS)) == []

    def test_high_latency_reported_once_per_run(self) -> None:
        tracker = RunTracker()
        late = T0 - 10 * LATENCY_MS
        found = feed(tracker, (started(), T0), (text(timestamp=late), T0 + 1), (text(timestamp=late), T0 + 2))
        found += feed(tracker, (started(run="r2"), T0), (text(timestamp=late), T0 + 3), run="r2")
        assert [(a.kind, a.run_id) for a in found] == [
            (AnomalyKind.HIGH_LATENCY, "r1"),
            (AnomalyKind.HIGH_LATENCY, "r2"),
        ]

    def test_high_latency_of_a_late_run_started_is_reported_alone(self) -> None:
        # A run's RUN_STARTED takes a shortcut past the event handlers: its latency must still be judged.
        tracker = RunTracker()
        late = msgspec.structs.replace(started(), timestamp=T0 - LATENCY_MS - 1)
        on_time = msgspec.structs.replace(started(run="r2"), timestamp=T0 - LATENCY_MS)
        assert kinds(feed(tracker, (late, T0))) == [AnomalyKind.HIGH_LATENCY]
        assert feed(tracker, (on_time, T0), run="r2") == []

    def test_high_latency_on_the_first_event_comes_with_the_missing_start(self) -> None:
        tracker = RunTracker()
        found = feed(tracker, (text(timestamp=T0 - LATENCY_MS - 1), T0))
        assert kinds(found) == [AnomalyKind.MISSING_AGENT_STARTED, AnomalyKind.HIGH_LATENCY]


class TestDuplicateCompletion:
    @pytest.mark.parametrize(
        ("first", "second"),
        [
            (finished(), finished()),
            (finished(), RunError(message="late failure")),
            (RunError(message="boom"), finished()),
            (RunError(message="boom"), RunError(message="boom again")),
        ],
        ids=["finished-finished", "finished-error", "error-finished", "error-error"],
    )
    def test_duplicate_second_completion_is_reported(self, first: AgentEvent, second: AgentEvent) -> None:
        tracker = RunTracker()
        found = feed(tracker, (started(), T0), (first, T0 + 1), (second, T0 + 2))
        assert [(a.kind, a.run_id, a.detected_at) for a in found] == [(AnomalyKind.DUPLICATE_COMPLETION, "r1", T0 + 2)]

    def test_duplicate_third_completion_is_not_reported_again(self) -> None:
        tracker = RunTracker()
        found = feed(tracker, (started(), T0), (finished(), T0 + 1), (finished(), T0 + 2), (finished(), T0 + 3))
        assert kinds(found) == [AnomalyKind.DUPLICATE_COMPLETION]

    def test_duplicate_single_completion_is_normal(self) -> None:
        tracker = RunTracker()
        assert feed(tracker, (started(), T0), (finished(), T0 + 1)) == []


class TestEventAfterCompletion:
    def test_after_completion_event_is_reported_once_per_run(self) -> None:
        tracker = RunTracker()
        found = feed(tracker, (started(), T0), (finished(), T0 + 1), (text(), T0 + 500), (text(), T0 + 600))
        assert [(a.kind, a.detected_at) for a in found] == [(AnomalyKind.EVENT_AFTER_COMPLETION, T0 + 500)]
        assert "499 ms after" in found[0].detail

    def test_after_completion_run_started_again_is_reported(self) -> None:
        tracker = RunTracker()
        found = feed(tracker, (started(), T0), (finished(), T0 + 1), (started(), T0 + 2))
        assert kinds(found) == [AnomalyKind.EVENT_AFTER_COMPLETION]

    def test_after_completion_late_end_closes_the_call(self) -> None:
        tracker = RunTracker()
        found = feed(
            tracker, (started(), T0), (tool_start(), T0), (finished(), T0 + 1), (ToolCallEnd(tool_call_id="c1"), T0 + 2)
        )
        assert kinds(found) == [AnomalyKind.EVENT_AFTER_COMPLETION]
        assert tracker.advance(T0 + STUCK_MS) == ()

    def test_after_completion_beyond_retention_is_a_new_run(self) -> None:
        tracker = RunTracker()
        feed(tracker, (started(), T0), (finished(), T0 + 1))
        assert tracker.advance(T0 + 1 + RETENTION_MS - 1) == ()
        assert kinds(tracker.observe(stamped(text(), at=T0 + RETENTION_MS, seq=3))) == [
            AnomalyKind.EVENT_AFTER_COMPLETION
        ]
        tracker.advance(T0 + 1 + RETENTION_MS)
        assert tracker.statistics().runs_retained == 0
        late = tracker.observe(stamped(text(), at=T0 + RETENTION_MS + 2, seq=4))
        assert kinds(late) == [AnomalyKind.MISSING_AGENT_STARTED]

    def test_after_completion_events_before_the_finish_are_normal(self) -> None:
        tracker = RunTracker()
        assert feed(tracker, (started(), T0), (text(), T0 + 1), (StepStarted(step_name="s"), T0 + 2)) == []


class TestErrorBurst:
    @staticmethod
    def errors(tracker: RunTracker, times: list[int]) -> list[Anomaly]:
        found: list[Anomaly] = []
        for n, at in enumerate(times):
            found += feed(
                tracker, (started(f"t{n}", f"r{n}"), at), (RunError(message="x"), at), thread=f"t{n}", run=f"r{n}"
            )
        return found

    def test_error_burst_count_errors_within_the_window_are_reported(self) -> None:
        tracker = RunTracker()
        found = self.errors(tracker, [T0 + 1_000 * n for n in range(5)])
        assert len(found) == 1
        (anomaly,) = found
        assert anomaly.kind is AnomalyKind.ERROR_BURST
        assert (anomaly.thread_id, anomaly.run_id, anomaly.detected_at) == (ALL_THREADS, None, T0 + 4_000)
        assert anomaly.window_start == (T0 + 4_000) - (T0 + 4_000) % BURST_WINDOW_MS

    def test_error_burst_one_error_fewer_is_not_reported(self) -> None:
        tracker = RunTracker()
        assert self.errors(tracker, [T0 + 1_000 * n for n in range(4)]) == []

    def test_error_burst_boundary_span_must_be_under_the_window(self) -> None:
        span = [T0, T0 + 1, T0 + 2, T0 + 3]
        assert self.errors(RunTracker(), [*span, T0 + BURST_WINDOW_MS]) == []
        assert kinds(self.errors(RunTracker(), [*span, T0 + BURST_WINDOW_MS - 1])) == [AnomalyKind.ERROR_BURST]

    def test_error_burst_continuing_is_reported_once_per_window(self) -> None:
        start = T0 - T0 % BURST_WINDOW_MS  # aligned, so the first 60 errors share a window
        found = self.errors(RunTracker(), [start + 1_000 * n for n in range(120)])
        assert [a.window_start for a in found] == [start, start + BURST_WINDOW_MS]
        assert len({a.key for a in found}) == 2

    def test_error_burst_spread_out_errors_are_not_reported(self) -> None:
        assert self.errors(RunTracker(), [T0 + 20_000 * n for n in range(20)]) == []

    def test_error_burst_duplicate_errors_count(self) -> None:
        tracker = RunTracker()
        found = feed(tracker, (started(), T0), *[(RunError(message="x"), T0 + n) for n in range(5)])
        assert kinds(found) == [AnomalyKind.DUPLICATE_COMPLETION, AnomalyKind.ERROR_BURST]


class TestUndeliveredEvent:
    def test_undelivered_unconfirmed_event_is_reported_exactly_at_the_threshold(self) -> None:
        tracker = RunTracker()
        tracker.expect_delivery("t1", 1, T0)
        assert tracker.next_deadline() == T0 + UNDELIVERED_MS
        assert tracker.advance(T0 + UNDELIVERED_MS - 1) == ()
        found = tracker.advance(T0 + UNDELIVERED_MS)
        assert len(found) == 1
        (anomaly,) = found
        assert anomaly.kind is AnomalyKind.UNDELIVERED_EVENT
        assert (anomaly.thread_id, anomaly.seq, anomaly.detected_at) == ("t1", 1, T0 + UNDELIVERED_MS)

    def test_undelivered_confirmed_just_in_time_is_not_reported(self) -> None:
        tracker = RunTracker()
        tracker.expect_delivery("t1", 1, T0)
        tracker.advance(T0 + UNDELIVERED_MS - 1)
        tracker.confirm_delivery("t1", 1)
        assert tracker.advance(T0 + 10 * UNDELIVERED_MS) == ()
        assert tracker.statistics().pending_deliveries == 0

    def test_undelivered_batched_confirmation_covers_lower_seqs(self) -> None:
        tracker = RunTracker()
        for seq in range(1, 11):
            tracker.expect_delivery("t1", seq, T0 + seq)
        assert tracker.statistics().pending_deliveries == 10
        tracker.confirm_delivery("t1", 10)
        tracker.confirm_delivery("t1", 4)  # a stale, lower confirmation changes nothing
        assert tracker.advance(T0 + 10 * UNDELIVERED_MS) == ()

    def test_undelivered_consecutive_overdue_seqs_make_one_report(self) -> None:
        tracker = RunTracker()
        for seq in (1, 2, 3):
            tracker.expect_delivery("t1", seq, T0 + seq)
        tracker.expect_delivery("t1", 4, T0 + 1_000)
        found = tracker.advance(T0 + 3 + UNDELIVERED_MS)
        assert [(a.seq, a.detected_at) for a in found] == [(1, T0 + 3 + UNDELIVERED_MS)]
        assert "3 event(s), seq 1..3" in found[0].detail
        # Seq 4 falls due while the gap is open: it joins it, unreported.
        assert tracker.advance(T0 + 1_000 + UNDELIVERED_MS) == ()
        assert tracker.statistics().pending_deliveries == 0

    def test_undelivered_stalled_thread_is_reported_once_not_once_per_check(self) -> None:
        # Regression: each newly overdue batch was a new key, so a stalled thread was reported at every check.
        tracker = RunTracker()
        found: list[Anomaly] = []
        for n in range(600):  # ten events a second for a minute, checked every second, never delivered
            tracker.expect_delivery("t1", n + 1, T0 + 100 * n)
            if n % 10 == 9:
                found += tracker.advance(T0 + 100 * n)
        found += tracker.advance(T0 + 60_000 + UNDELIVERED_MS)
        assert [(a.kind, a.thread_id, a.seq) for a in found] == [(AnomalyKind.UNDELIVERED_EVENT, "t1", 1)]
        assert found[0].detected_at == T0 + UNDELIVERED_MS + 900  # the first check at or after seq 1's deadline

    def test_undelivered_gap_closed_by_catching_up_lets_a_new_gap_be_reported(self) -> None:
        tracker = RunTracker()
        for seq in (1, 2, 3):
            tracker.expect_delivery("t1", seq, T0)
        assert [a.seq for a in tracker.advance(T0 + UNDELIVERED_MS)] == [1]
        tracker.confirm_delivery("t1", 3)  # the thread caught up with everything found overdue
        tracker.expect_delivery("t1", 4, T0 + UNDELIVERED_MS)
        tracker.expect_delivery("t1", 5, T0 + UNDELIVERED_MS)
        found = tracker.advance(T0 + 2 * UNDELIVERED_MS)
        assert [a.seq for a in found] == [4]
        assert "2 event(s), seq 4..5" in found[0].detail
        assert "highest confirmed seq: 3" in found[0].detail

    def test_undelivered_confirmation_short_of_the_overdue_seqs_keeps_the_gap_open(self) -> None:
        tracker = RunTracker()
        for seq in (1, 2):
            tracker.expect_delivery("t1", seq, T0)
        tracker.expect_delivery("t1", 3, T0 + 1_000)
        assert [a.seq for a in tracker.advance(T0 + UNDELIVERED_MS)] == [1]
        assert tracker.advance(T0 + 1_000 + UNDELIVERED_MS) == ()  # seq 3 joins the gap
        # Past the reported seq, one short of the highest overdue one: still behind, still the same gap.
        tracker.confirm_delivery("t1", 2)
        tracker.expect_delivery("t1", 4, T0 + 2_000)
        assert tracker.advance(T0 + 2_000 + UNDELIVERED_MS) == ()
        # Exactly the highest overdue seq (4): caught up, and the next overdue seq opens a new gap.
        tracker.confirm_delivery("t1", 4)
        tracker.expect_delivery("t1", 5, T0 + 3_000)
        assert [a.seq for a in tracker.advance(T0 + 3_000 + UNDELIVERED_MS)] == [5]

    def test_undelivered_confirmation_of_in_flight_seqs_only_does_not_close_the_gap(self) -> None:
        tracker = RunTracker()
        tracker.expect_delivery("t1", 1, T0)
        assert [a.seq for a in tracker.advance(T0 + UNDELIVERED_MS)] == [1]
        tracker.expect_delivery("t1", 2, T0 + UNDELIVERED_MS)
        tracker.confirm_delivery("t1", 0)  # below what was reported: ignored
        assert tracker.advance(T0 + 2 * UNDELIVERED_MS) == ()

    def test_undelivered_gap_of_a_thread_that_lost_its_subscribers_is_forgotten(self) -> None:
        tracker = RunTracker()
        tracker.expect_delivery("t1", 1, T0)
        assert [a.seq for a in tracker.advance(T0 + UNDELIVERED_MS)] == [1]
        tracker.thread_has_no_subscribers("t1")
        tracker.expect_delivery("t1", 7, T0 + UNDELIVERED_MS)  # a new subscriber, and a new gap
        assert [a.seq for a in tracker.advance(T0 + 2 * UNDELIVERED_MS)] == [7]

    def test_undelivered_gaps_are_per_thread(self) -> None:
        tracker = RunTracker()
        tracker.expect_delivery("t1", 1, T0)
        assert [a.thread_id for a in tracker.advance(T0 + UNDELIVERED_MS)] == ["t1"]
        tracker.expect_delivery("t1", 2, T0 + 1)
        tracker.expect_delivery("t2", 1, T0 + 1)
        assert [(a.thread_id, a.seq) for a in tracker.advance(T0 + 1 + UNDELIVERED_MS)] == [("t2", 1)]

    def test_undelivered_partial_confirmation_reports_only_the_rest(self) -> None:
        tracker = RunTracker()
        for seq in (1, 2, 3):
            tracker.expect_delivery("t1", seq, T0)
        tracker.confirm_delivery("t1", 2)
        assert [a.seq for a in tracker.advance(T0 + UNDELIVERED_MS)] == [3]

    def test_undelivered_long_backlog_confirmed_in_steps_reports_only_the_rest(self) -> None:
        tracker = RunTracker()
        for seq in range(1, 1_001):
            tracker.expect_delivery("t1", seq, T0 + seq)
            if seq % 10 == 0 and seq <= 900:
                tracker.confirm_delivery("t1", seq - 5)
        assert tracker.statistics().pending_deliveries == 105
        found = tracker.advance(T0 + 1_000 + UNDELIVERED_MS)
        assert [a.seq for a in found] == [896]
        assert "105 event(s), seq 896..1000" in found[0].detail
        assert tracker.statistics().pending_deliveries == 0

    def test_undelivered_thread_without_subscribers_is_not_reported(self) -> None:
        tracker = RunTracker()
        tracker.expect_delivery("t1", 1, T0)
        tracker.thread_has_no_subscribers("t1")
        assert tracker.advance(T0 + 10 * UNDELIVERED_MS) == ()
        assert tracker.statistics().pending_deadlines == 0
        # Expectations resume with the next routed event.
        tracker.expect_delivery("t1", 2, T0 + 1)
        assert [a.seq for a in tracker.advance(T0 + 1 + UNDELIVERED_MS)] == [2]

    def test_undelivered_confirmation_overtaking_its_expectation_is_not_reported(self) -> None:
        tracker = RunTracker()
        tracker.confirm_delivery("t1", 5)
        tracker.expect_delivery("t1", 5, T0)
        assert tracker.advance(T0 + 10 * UNDELIVERED_MS) == ()

    def test_undelivered_only_the_stuck_thread_is_reported(self) -> None:
        tracker = RunTracker()
        tracker.expect_delivery("t1", 1, T0)
        tracker.expect_delivery("t2", 1, T0)
        tracker.confirm_delivery("t2", 1)
        assert [a.thread_id for a in tracker.advance(T0 + UNDELIVERED_MS)] == ["t1"]


class TestDeadlines:
    def test_next_deadline_is_none_when_nothing_is_pending(self) -> None:
        tracker = RunTracker()
        assert tracker.next_deadline() is None
        feed(tracker, (started(), T0), (finished(), T0 + 1))
        assert tracker.next_deadline() == T0 + 1 + RETENTION_MS
        tracker.advance(T0 + 1 + RETENTION_MS)
        assert tracker.next_deadline() is None

    def test_next_deadline_skips_invalidated_entries(self) -> None:
        tracker = RunTracker()
        feed(tracker, (started(), T0))
        for n in range(100):
            call = f"c{n}"
            feed(tracker, (tool_start(call), T0 + n), (ToolCallEnd(tool_call_id=call), T0 + n), (result(call), T0 + n))
        assert tracker.next_deadline() == T0 + STALE_MS

    def test_next_deadline_of_a_delivered_thread_comes_early_and_reports_nothing(self) -> None:
        # A confirmation leaves the thread's entry in place (one heap entry per threshold, not one per event).
        tracker = RunTracker()
        tracker.expect_delivery("t1", 1, T0)
        tracker.confirm_delivery("t1", 1)
        assert tracker.next_deadline() == T0 + UNDELIVERED_MS
        assert tracker.advance(T0 + UNDELIVERED_MS) == ()
        assert tracker.next_deadline() is None
        assert tracker.statistics().pending_deadlines == 0

    def test_pending_deadlines_count_only_live_ones_under_churn(self) -> None:
        tracker = RunTracker()
        feed(tracker, (started(), T0))
        for n in range(10_000):
            call = f"c{n}"
            tracker.observe(stamped(tool_start(call), at=T0 + n))
            tracker.observe(stamped(ToolCallEnd(tool_call_id=call), at=T0 + n))
            tracker.observe(stamped(result(call), at=T0 + n))
        tracker.observe(stamped(tool_start("open"), at=T0 + 10_000))
        assert tracker.statistics().pending_deadlines == 2
        found = tracker.advance(T0 + 10_000 + STUCK_MS)
        assert [(a.kind, a.tool_call_id) for a in found] == [(AnomalyKind.STUCK_TOOL, "open")]

    def test_advance_returns_the_shared_empty_tuple_when_nothing_is_due(self) -> None:
        tracker = RunTracker()
        feed(tracker, (started(), T0))
        assert tracker.advance(T0) is tracker.advance(T0 + 1)
        assert tracker.observe(stamped(text(), at=T0 + 2, seq=2)) is tracker.advance(T0 + 3)


class TestMemoryBounds:
    def test_cap_evicts_the_least_recently_active_run(self) -> None:
        tracker = RunTracker(DetectionThresholds(max_tracked_runs=3))
        for n in (1, 2, 3):
            feed(tracker, (started(run=f"r{n}"), T0 + n), run=f"r{n}")
        feed(tracker, (text(), T0 + 4), run="r1")  # r1 active again: r2 is now the least recently active
        feed(tracker, (started(run="r4"), T0 + 5), run="r4")
        stats = tracker.statistics()
        assert (stats.runs_in_flight, stats.evictions) == (3, 1)
        assert feed(tracker, (text(), T0 + 6), run="r1") == []
        assert kinds(feed(tracker, (text(), T0 + 7), run="r2")) == [AnomalyKind.MISSING_AGENT_STARTED]

    def test_cap_eviction_cancels_the_evicted_runs_deadlines(self) -> None:
        tracker = RunTracker(DetectionThresholds(max_tracked_runs=1))
        feed(tracker, (started(run="r1"), T0), (tool_start(), T0), run="r1")
        feed(tracker, (started(run="r2"), T0 + 1), (finished(run="r2"), T0 + 2), run="r2")
        assert tracker.statistics().evictions == 1
        assert tracker.advance(T0 + 10 * RETENTION_MS) == ()

    def test_cap_bounds_the_retained_finished_runs(self) -> None:
        tracker = RunTracker(DetectionThresholds(max_tracked_runs=2))
        for n in range(5):
            feed(tracker, (started(run=f"r{n}"), T0 + n), (finished(run=f"r{n}"), T0 + n), run=f"r{n}")
        stats = tracker.statistics()
        assert (stats.runs_retained, stats.evictions) == (2, 3)

    def test_cap_bounds_the_threads_with_delivery_state(self) -> None:
        tracker = RunTracker(DetectionThresholds(max_tracked_runs=2))
        for n in range(4):
            tracker.expect_delivery(f"t{n}", 1, T0)
        assert tracker.statistics().evictions == 2
        assert sorted(a.thread_id for a in tracker.advance(T0 + UNDELIVERED_MS)) == ["t2", "t3"]

    def test_retention_evicts_finished_runs(self) -> None:
        tracker = RunTracker()
        for n in range(100):
            feed(tracker, (started(run=f"r{n}"), T0), (finished(run=f"r{n}"), T0 + n), run=f"r{n}")
        assert tracker.statistics().runs_retained == 100
        tracker.advance(T0 + 49 + RETENTION_MS)
        assert tracker.statistics().runs_retained == 50
        tracker.advance(T0 + 99 + RETENTION_MS)
        assert tracker.statistics().runs_retained == 0

    def test_cap_second_chance_never_evicts_the_newcomer(self) -> None:
        # Every run was active since it was queued: each gets its second chance, and the one queued longest ago
        # (also the least recently active here) goes, not the run that is starting.
        tracker = RunTracker(DetectionThresholds(max_tracked_runs=2))
        feed(tracker, (started(run="r1"), T0), run="r1")
        feed(tracker, (started(run="r2"), T0 + 1), run="r2")
        feed(tracker, (text(), T0 + 2), run="r1")
        feed(tracker, (text(), T0 + 3), run="r2")
        feed(tracker, (started(run="r3"), T0 + 4), run="r3")
        assert tracker.statistics().evictions == 1
        assert feed(tracker, (text(), T0 + 5), run="r2") == []
        assert feed(tracker, (text(), T0 + 6), run="r3") == []
        assert kinds(feed(tracker, (text(), T0 + 7), run="r1")) == [AnomalyKind.MISSING_AGENT_STARTED]

    def test_cap_evicts_the_thread_with_nothing_expected_since_it_was_queued(self) -> None:
        tracker = RunTracker(DetectionThresholds(max_tracked_runs=2))
        tracker.expect_delivery("t1", 1, T0)
        tracker.expect_delivery("t2", 1, T0 + 1)
        tracker.expect_delivery("t1", 2, T0 + 2)  # t1 active again: t2 goes
        tracker.expect_delivery("t3", 1, T0 + 3)
        assert tracker.statistics().evictions == 1
        assert sorted(a.thread_id for a in tracker.advance(T0 + 3 + UNDELIVERED_MS)) == ["t1", "t3"]


class TestIngest:
    """``ingest`` is ``observe`` then ``expect_delivery``; it finds a thread's run through its delivery state."""

    def test_ingest_routed_events_are_observed_and_expected(self) -> None:
        tracker = RunTracker()
        assert tracker.ingest([routed(started(), at=T0)]) == ()
        assert tracker.ingest([routed(text(), at=T0 + 1, seq=2)]) == ()
        stats = tracker.statistics()
        assert (stats.events_observed, stats.runs_in_flight, stats.pending_deliveries) == (2, 1, 2)
        assert [a.seq for a in tracker.advance(T0 + UNDELIVERED_MS)] == [1]

    def test_ingest_unrouted_events_are_observed_only(self) -> None:
        tracker = RunTracker()
        tracker.ingest([stamped(started(), at=T0)])
        tracker.ingest([stamped(tool_start(), at=T0 + 1, seq=2)])
        assert tracker.statistics().pending_deliveries == 0
        assert [a.kind for a in tracker.advance(T0 + 1 + STUCK_MS)] == [AnomalyKind.STUCK_TOOL]

    def test_ingest_counts_events_and_the_routed_ones_apart_from_observe(self) -> None:
        # The monitor's flow window reads these instead of counting the tap itself.
        tracker = RunTracker()
        tracker.ingest([routed(started(), at=T0)])
        tracker.ingest([stamped(text(), at=T0 + 1, seq=2)])  # routed to nobody
        tracker.ingest([routed(tool_start(), at=T0 + 2, seq=3)])  # a handled type, through the in-time dispatch
        tracker.ingest([routed(text(), at=T0 + 3, seq=4)])
        tracker.observe(stamped(text(), at=T0 + 4, thread="t2", run="r2"))  # not ingested
        assert (tracker.ingested, tracker.ingested_routed) == (4, 3)
        assert tracker.statistics().events_observed == 5

    def test_ingest_of_a_new_run_on_a_known_thread_counts_once(self) -> None:
        # The slow path (a run the thread's cached run is not) must not count the event a second time.
        tracker = RunTracker()
        tracker.ingest([routed(started(run="r1"), at=T0, run="r1")])
        tracker.ingest([routed(finished(run="r1"), at=T0 + 1, run="r1", seq=2)])
        tracker.ingest([routed(started(run="r2"), at=T0 + 2, run="r2", seq=3)])
        assert (tracker.ingested, tracker.statistics().events_observed) == (3, 3)

    def test_ingest_interleaved_runs_of_one_thread_keep_their_own_state(self) -> None:
        tracker = RunTracker()
        events: list[tuple[AgentEvent, str]] = [
            (started(run="r1"), "r1"),
            (started(run="r2"), "r2"),
            (tool_start("a"), "r1"),
            (text(), "r2"),
            (finished(run="r2"), "r2"),
            (text(), "r1"),
        ]
        found = [
            a for seq, (event, run) in enumerate(events, 1) for a in tracker.ingest([routed(event, run=run, seq=seq)])
        ]
        assert found == []
        stats = tracker.statistics()
        assert (stats.runs_in_flight, stats.runs_retained) == (1, 1)
        tracker.confirm_delivery("t1", len(events))
        stuck = tracker.advance(T0 + STUCK_MS)
        assert [(a.kind, a.run_id, a.tool_call_id) for a in stuck] == [(AnomalyKind.STUCK_TOOL, "r1", "a")]

    def test_ingest_run_of_taps_fires_the_deadlines_due_before_each_tap_first(self) -> None:
        # One call for a run of taps, as the monitor takes them from its mailbox: a deadline that passed before a
        # tap was accepted is reported, at that tap's time, before what the tap itself reveals.
        tracker = RunTracker()
        late = T0 + 1 + STUCK_MS
        found = tracker.ingest(
            [
                stamped(started(), at=T0),
                stamped(tool_start("c1"), at=T0 + 1, seq=2),
                stamped(ToolCallResult(message_id="r", tool_call_id="c9", content="?"), at=late, seq=3),
            ]
        )
        assert [(a.kind, a.tool_call_id, a.detected_at) for a in found] == [
            (AnomalyKind.STUCK_TOOL, "c1", late),
            (AnomalyKind.ORPHAN_TOOL_COMPLETED, "c9", late),
        ]
        assert (tracker.ingested, tracker.last_taken.seq if tracker.last_taken else None) == (3, 3)

    def test_ingest_tap_that_raises_is_the_last_taken(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # The monitor records last_taken as seen even when ingest raised on it: a restarted monitor does not
        # replay a poison event into a crash loop, and replays the taps behind it as unseen.
        def poison(tracker: RunTracker, run: Any, tap: StampedEvent) -> None:
            raise RuntimeError("poison")

        monkeypatch.setitem(detection_module._IN_TIME, ToolCallStart, poison)
        tracker = RunTracker()
        taps = [routed(started(), at=T0), routed(tool_start(), at=T0, seq=2), routed(text(), at=T0, seq=3)]
        with pytest.raises(RuntimeError, match="poison"):
            tracker.ingest(taps)
        assert tracker.last_taken is taps[1]

    def test_ingest_tap_raising_mid_run_anomalies_of_earlier_taps_kept(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # Regression: a later tap raising dropped what the earlier taps of its run revealed (a run's state already
        # said they were found, so nothing reported them again).
        def poison(tracker: RunTracker, run: Any, tap: StampedEvent) -> None:
            raise RuntimeError("poison")

        monkeypatch.setitem(detection_module._IN_TIME, ToolCallStart, poison)
        tracker = RunTracker()
        taps = [routed(ToolCallEnd(tool_call_id="x"), at=T0), routed(tool_start("c1"), at=T0, run="r2", seq=2)]
        with pytest.raises(RuntimeError, match="poison"):
            tracker.ingest(taps)
        assert tracker.last_taken is taps[1]
        assert kinds(tracker.found_before_failure) == [
            AnomalyKind.MISSING_AGENT_STARTED,
            AnomalyKind.ORPHAN_TOOL_COMPLETED,
        ]
        by_kind = tracker.statistics().anomalies_by_kind
        assert (by_kind[AnomalyKind.MISSING_AGENT_STARTED], tracker.ingested) == (1, 2)

    def test_ingest_event_for_the_run_just_finished_is_after_completion(self) -> None:
        tracker = RunTracker()
        tracker.ingest([routed(started(), at=T0)])
        tracker.ingest([routed(finished(), at=T0 + 1, seq=2)])
        assert kinds(tracker.ingest([routed(text(), at=T0 + 2, seq=3)])) == [AnomalyKind.EVENT_AFTER_COMPLETION]

    def test_ingest_event_for_an_evicted_run_is_a_missing_start(self) -> None:
        tracker = RunTracker(DetectionThresholds(max_tracked_runs=2))
        tracker.ingest([routed(started(run="r1"), at=T0, run="r1")])
        tracker.ingest([routed(text(), at=T0, run="r1", seq=2)])  # thread t1 now leads to r1
        tracker.ingest([routed(started("t2", "r2"), at=T0 + 1, thread="t2", run="r2")])
        tracker.ingest([routed(started("t2", "r3"), at=T0 + 1, thread="t2", run="r3", seq=2)])  # r1 is evicted
        assert tracker.statistics().evictions == 1  # a run; both threads keep their delivery state
        found = tracker.ingest([routed(text(), at=T0 + 2, run="r1", seq=3)])
        assert [(a.kind, a.run_id) for a in found] == [(AnomalyKind.MISSING_AGENT_STARTED, "r1")]

    def test_ingest_event_for_an_abandoned_run_is_a_missing_start(self) -> None:
        tracker = RunTracker()
        tracker.ingest([routed(started(), at=T0)])
        tracker.ingest([routed(text(), at=T0, seq=2)])  # the thread now leads to the run
        tracker.confirm_delivery("t1", 2)
        assert kinds(tracker.advance(T0 + STALE_MS)) == [AnomalyKind.STALE_THREAD]
        tracker.advance(T0 + STALE_MS + RETENTION_MS)
        assert tracker.statistics().runs_abandoned == 1
        found = tracker.ingest([routed(text(), at=T0 + STALE_MS + RETENTION_MS + 1, seq=3)])
        assert kinds(found) == [AnomalyKind.MISSING_AGENT_STARTED]

    def test_ingest_late_event_of_a_known_run_is_reported_once(self) -> None:
        tracker = RunTracker()
        tracker.ingest([routed(started(), at=T0)])
        tracker.ingest([routed(text(), at=T0 + 1, seq=2)])  # the thread now leads to the run
        assert kinds(tracker.ingest([routed(text(timestamp=T0), at=T0 + LATENCY_MS + 1, seq=3)])) == [
            AnomalyKind.HIGH_LATENCY
        ]
        assert tracker.ingest([routed(text(timestamp=T0), at=T0 + LATENCY_MS + 2, seq=4)]) == ()

    def test_confirm_deliveries_counts_what_each_thread_newly_confirmed(self) -> None:
        tracker = RunTracker()
        for seq in (5, 6, 7):  # a client subscribed at seq 5: seqs 1-4 were never routed
            tracker.expect_delivery("t1", seq, T0)
        tracker.expect_delivery("t2", 1, T0)
        assert tracker.confirm_deliveries({"t1": 6, "t2": 1, "t3": 9}) == 3  # t3: never expected, not counted
        assert tracker.confirm_deliveries({"t1": 7, "t2": 1}) == 1
        assert tracker.confirm_deliveries({"t1": 2}) == 0
        assert tracker.statistics().pending_deliveries == 0


class TestConcurrentRuns:
    def test_100k_runs_in_flight_fit_in_2_kb_each_and_all_complete(self) -> None:
        # Each run: RUN_STARTED, a tool call left open, a text delta, all routed, on its own thread (so each run
        # also carries a thread's delivery state with three events pending). Ids are made inside the measurement.
        runs = 100_000
        tracker = RunTracker()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for n in range(runs):
                thread, run, at = f"thread-{n:08d}", f"run-{n:08d}", T0 + n // 100
                opening: tuple[AgentEvent, ...] = (started(thread, run), tool_start(f"call-{n:08d}"), text())
                for seq, event in enumerate(opening, start=1):
                    tracker.ingest([routed(event, at=at, thread=thread, run=run, seq=seq)])
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        stats = tracker.statistics()
        assert (stats.runs_in_flight, stats.pending_deliveries, stats.evictions) == (runs, 3 * runs, 0)
        assert held / runs < 2048
        # Every one then completes in time: delivered, its call ended and resulted, its run finished.
        end = T0 + runs // 100 + 1
        tracker.confirm_deliveries({f"thread-{n:08d}": 3 for n in range(runs)})
        for n in range(runs):
            thread, run, call = f"thread-{n:08d}", f"run-{n:08d}", f"call-{n:08d}"
            closing: tuple[AgentEvent, ...] = (ToolCallEnd(tool_call_id=call), result(call), finished(thread, run))
            for seq, event in enumerate(closing, start=4):
                assert tracker.ingest([routed(event, at=end, thread=thread, run=run, seq=seq)]) == ()
        assert tracker.confirm_deliveries({f"thread-{n:08d}": 6 for n in range(runs)}) == 3 * runs
        assert tracker.advance(end + STALE_MS) == ()
        stats = tracker.statistics()
        assert (stats.runs_in_flight, stats.runs_retained, stats.pending_deliveries) == (0, runs, 0)
        assert (stats.evictions, stats.anomalies_by_kind) == (0, {})
        assert tracker.advance(end + RETENTION_MS) == ()
        assert tracker.statistics().runs_retained == 0


class TestRebuild:
    @staticmethod
    def replay(*items: tuple[AgentEvent, int], thread: str = "t1", run: str = "r1") -> list[StampedEvent]:
        return [
            stamped(event, at=at, thread=thread, run=run, seq=seq) for seq, (event, at) in enumerate(items, start=1)
        ]

    def test_rebuild_restores_in_flight_state_silently(self) -> None:
        tracker = RunTracker()
        items = self.replay((started(), T0), (tool_start(), T0 + 1))
        assert tracker.rebuild(items, now_ms=T0 + 2) == ()
        assert tracker.statistics().runs_in_flight == 1
        assert tracker.observe(stamped(ToolCallEnd(tool_call_id="c1"), at=T0 + 3, seq=3)) == ()
        assert tracker.observe(stamped(finished(), at=T0 + 4, seq=4)) == ()

    def test_rebuild_truncated_ring_is_not_a_missing_start(self) -> None:
        tracker = RunTracker()
        items = self.replay((text(), T0), (ToolCallEnd(tool_call_id="before-the-ring"), T0 + 1))
        assert tracker.rebuild(items, now_ms=T0 + 2) == ()
        assert tracker.observe(stamped(text(), at=T0 + 3, seq=3)) == ()

    def test_rebuild_immediate_anomalies_of_the_replay_are_not_reported_again(self) -> None:
        tracker = RunTracker()
        items = self.replay(
            (started(), T0), (text(timestamp=T0 - 10 * LATENCY_MS), T0 + 1), (finished(), T0 + 2), (finished(), T0 + 3)
        )
        assert tracker.rebuild(items, now_ms=T0 + 4) == ()
        # The flags came back too: these would otherwise be reported now.
        assert tracker.observe(stamped(finished(), at=T0 + 5, seq=5)) == ()

    def test_rebuild_tool_stuck_before_the_crash_is_reported(self) -> None:
        tracker = RunTracker()
        items = self.replay((started(), T0), (tool_start(), T0 + 1))
        found = tracker.rebuild(items, now_ms=T0 + 1 + STUCK_MS)
        assert [(a.kind, a.tool_call_id) for a in found] == [(AnomalyKind.STUCK_TOOL, "c1")]
        assert tracker.statistics().anomalies_by_kind == {AnomalyKind.STUCK_TOOL: 1}

    def test_rebuild_tool_stuck_while_the_monitor_was_down_is_reported(self) -> None:
        tracker = RunTracker()
        items = self.replay((started(), T0), (tool_start(), T0), (ToolCallEnd(tool_call_id="c1"), T0 + 40_000))
        found = tracker.rebuild(items, now_ms=T0 + 45_000)
        assert [(a.kind, a.detected_at) for a in found] == [(AnomalyKind.STUCK_TOOL, T0 + 40_000)]

    def test_rebuild_already_reported_keys_are_not_reported_twice(self) -> None:
        first = RunTracker()
        items = self.replay((started(), T0), (tool_start(), T0))
        reported = ReportedKeys()
        for anomaly in first.rebuild(items, now_ms=T0 + STUCK_MS):
            assert reported.add(anomaly.key)
        assert len(reported) == 1
        second = RunTracker()
        assert second.rebuild(items, now_ms=T0 + STALE_MS - 1, already_reported=reported) == ()
        assert second.statistics().anomalies_by_kind == {}

    def test_rebuild_stale_run_is_reported_and_finished_one_is_not(self) -> None:
        tracker = RunTracker()
        items = [
            *self.replay((started(), T0), (text(), T0 + 5), run="quiet"),
            *self.replay((started(), T0), (finished(), T0 + 5), run="done"),
        ]
        random.Random(3).shuffle(items)  # rings arrive thread by thread, not in time order
        found = tracker.rebuild(items, now_ms=T0 + 5 + STALE_MS)
        assert [(a.kind, a.run_id, a.detected_at) for a in found] == [
            (AnomalyKind.STALE_THREAD, "quiet", T0 + 5 + STALE_MS)
        ]

    def test_rebuild_finished_run_with_a_call_left_open_still_reports_it_stuck(self) -> None:
        tracker = RunTracker()
        items = self.replay((started(), T0), (tool_start(), T0 + 1), (finished(), T0 + 2))
        assert tracker.rebuild(items, now_ms=T0 + 2) == ()
        assert tracker.statistics().runs_retained == 1
        found = tracker.advance(T0 + 1 + STUCK_MS)
        assert [(a.kind, a.tool_call_id) for a in found] == [(AnomalyKind.STUCK_TOOL, "c1")]

    def test_rebuild_finished_run_late_event_reported_once(self) -> None:
        tracker = RunTracker()
        items = self.replay((started(), T0), (finished(), T0 + 1), (text(), T0 + 2))
        assert tracker.rebuild(items, now_ms=T0 + 3) == ()
        # Its late event was the previous monitor's to report; the next one is not news either.
        assert tracker.observe(stamped(text(), at=T0 + 4, seq=4)) == ()
        assert kinds(tracker.observe(stamped(finished(), at=T0 + 5, seq=5))) == [AnomalyKind.DUPLICATE_COMPLETION]

    def test_rebuild_run_finished_longer_than_retention_ago_is_not_kept(self) -> None:
        tracker = RunTracker()
        items = self.replay((started(), T0), (finished(), T0 + 1))
        assert tracker.rebuild(items, now_ms=T0 + 1 + RETENTION_MS) == ()
        stats = tracker.statistics()
        assert (stats.runs_in_flight, stats.runs_retained, stats.pending_deadlines, stats.events_observed) == (
            0,
            0,
            0,
            2,
        )

    def test_rebuild_error_burst_under_way_goes_on_counting(self) -> None:
        thresholds = DetectionThresholds(error_burst_count=3)
        tracker = RunTracker(thresholds)
        items = [
            *self.replay((started(run="a"), T0), (RunError(message="x"), T0 + 1), run="a"),
            *self.replay((started(run="b"), T0), (RunError(message="x"), T0 + 2), run="b"),
        ]
        assert tracker.rebuild(items, now_ms=T0 + 2) == ()
        found = feed(tracker, (started(run="c"), T0 + 3), (RunError(message="x"), T0 + 4), run="c")
        assert kinds(found) == [AnomalyKind.ERROR_BURST]

    # Regression (simulator bug 3): a ring that lost a run's RUN_FINISHED but kept a later event of it made the
    # rebuilt tracker believe the run in flight, and report it stale.
    def test_rebuild_remembered_finished_run_whose_completion_left_the_ring_not_stale(self) -> None:
        memory = FinishedRuns()
        previous = RunTracker(finished_runs=memory)
        feed(previous, (started(), T0), (text(), T0 + 1), (finished(), T0 + 2), (text(), T0 + 3))
        assert memory.get(("t1", "r1")) == T0 + 2
        ring = [stamped(text(), at=T0 + 3, seq=4)]  # everything before it aged out
        tracker = RunTracker(finished_runs=memory)
        assert tracker.rebuild(ring, now_ms=T0 + 3) == ()
        assert tracker.advance(T0 + 3 + STALE_MS + RETENTION_MS) == ()
        stats = tracker.statistics()
        assert (stats.runs_in_flight, stats.runs_abandoned) == (0, 0)

    def test_rebuild_without_the_memory_takes_that_run_for_one_in_flight(self) -> None:
        ring = [stamped(text(), at=T0 + 3, seq=4)]
        tracker = RunTracker()
        assert tracker.rebuild(ring, now_ms=T0 + 3) == ()
        assert kinds(tracker.advance(T0 + 3 + STALE_MS)) == [AnomalyKind.STALE_THREAD]

    def test_remembered_finished_run_not_in_the_ring_is_recalled_by_a_late_event(self) -> None:
        memory = FinishedRuns()
        memory.add(("t1", "r1"), T0)
        tracker = RunTracker(finished_runs=memory)
        assert tracker.rebuild([], now_ms=T0 + 1) == ()
        found = tracker.observe(stamped(text(), at=T0 + 2, seq=9))
        assert kinds(found) == [AnomalyKind.EVENT_AFTER_COMPLETION]
        assert tracker.advance(T0 + 2 + STALE_MS) == ()
        # Past the retention the run is forgotten, as an uninterrupted tracker forgets it.
        assert tracker.advance(T0 + RETENTION_MS) == ()
        assert kinds(tracker.observe(stamped(text(), at=T0 + RETENTION_MS, seq=10, run="r1"))) == [
            AnomalyKind.MISSING_AGENT_STARTED
        ]

    def test_rebuild_in_slices_yields_between_bounded_slices_and_matches_rebuild(self) -> None:
        items: list[StampedEvent] = []
        for n in range(100):
            thread, run = f"t{n}", f"r{n}"
            events: list[tuple[AgentEvent, int]] = [(started(thread, run), T0 + n)]
            events += [(text(), T0 + n + k) for k in range(1, 19)]
            if n % 3:
                events.append((finished(thread, run), T0 + n + 19))
            items += self.replay(*events, thread=thread, run=run)
        whole = RunTracker()
        expected = whole.rebuild(items, now_ms=T0 + STALE_MS + 200)
        assert kinds(expected) == [AnomalyKind.STALE_THREAD] * 34
        sliced = RunTracker()
        steps = sliced.rebuild_in_slices(items, T0 + STALE_MS + 200, slice_events=16)
        yields = 0
        observed = 0
        found: tuple[Anomaly, ...] | None = None
        while found is None:
            try:
                next(steps)
            except StopIteration as done:
                found = done.value
                continue
            yields += 1
            # No slice replays more than its budget plus the rest of one run.
            now_observed = sliced.statistics().events_observed
            assert now_observed - observed <= 16 + 20
            observed = now_observed
        assert found == expected
        assert yields >= 2 * len(items) // 16  # grouping and replaying, each in slices
        assert sliced.statistics() == whole.statistics()

    def test_rebuild_in_slices_rejects_a_bad_slice(self) -> None:
        with pytest.raises(ValueError, match="slice_events must be a positive int"):
            RunTracker().rebuild_in_slices([], T0, slice_events=0)

    def test_rebuild_of_a_used_tracker_raises(self) -> None:
        tracker = RunTracker()
        tracker.observe(stamped(started(), at=T0))
        with pytest.raises(ValueError, match=r"rebuild\(\) needs a fresh tracker"):
            tracker.rebuild([], now_ms=T0)


class TestStatistics:
    def test_statistics_count_events_and_anomalies_by_kind(self) -> None:
        tracker = RunTracker()
        feed(tracker, (started(), T0), (tool_start(), T0), (finished(), T0 + 1), (finished(), T0 + 2))
        tracker.advance(T0 + STUCK_MS)
        tracker.expect_delivery("t1", 1, T0)
        tracker.expect_delivery("t1", 2, T0)
        stats = tracker.statistics()
        assert stats.events_observed == 4
        assert stats.anomalies_by_kind == {AnomalyKind.DUPLICATE_COMPLETION: 1, AnomalyKind.STUCK_TOOL: 1}
        assert (stats.runs_in_flight, stats.runs_retained, stats.pending_deliveries) == (0, 1, 2)
        assert stats.pending_deadlines == 2  # the retained run's expiry and the thread's delivery deadline

    def test_statistics_snapshot_does_not_change_afterwards(self) -> None:
        tracker = RunTracker()
        stats = tracker.statistics()
        feed(tracker, (text(), T0))
        assert stats.anomalies_by_kind == {}
        assert stats.events_observed == 0


class TestAnomaly:
    def test_anomaly_key_identifies_kind_subject_and_occurrence(self) -> None:
        anomaly = Anomaly(
            kind=AnomalyKind.STUCK_TOOL,
            severity=Severity.CRITICAL,
            thread_id="t1",
            run_id="r1",
            tool_call_id="c1",
            detected_at=T0,
            detail="stuck",
        )
        assert anomaly.key == (AnomalyKind.STUCK_TOOL, "t1", "r1", "c1", None, None)
        later = msgspec.structs.replace(anomaly, detected_at=T0 + 1, detail="still stuck")
        assert later.key == anomaly.key

    def test_anomaly_encodes_with_camel_case_fields(self) -> None:
        anomaly = Anomaly(
            kind=AnomalyKind.UNDELIVERED_EVENT,
            severity=Severity.CRITICAL,
            thread_id="t1",
            detected_at=T0,
            detail="d",
            seq=4,
        )
        wire = msgspec.json.decode(msgspec.json.encode(anomaly))
        assert wire["kind"] == "undelivered_event"
        assert (wire["threadId"], wire["detectedAt"], wire["seq"]) == ("t1", T0, 4)
        assert msgspec.json.decode(msgspec.json.encode(anomaly), type=Anomaly) == anomaly

    def test_anomaly_every_kind_has_a_default_severity(self) -> None:
        assert {kind: kind.default_severity for kind in AnomalyKind}[AnomalyKind.STUCK_TOOL] is Severity.CRITICAL
        assert all(isinstance(kind.default_severity, Severity) for kind in AnomalyKind)

    def test_anomaly_kind_values_are_the_seed_names(self) -> None:
        assert {kind.value for kind in AnomalyKind} >= {
            "missing_agent_started",
            "orphan_tool_completed",
            "stuck_tool",
            "stale_thread",
            "high_latency",
        }


class TestReportedKeys:
    def test_reported_keys_add_is_true_only_the_first_time(self) -> None:
        keys = ReportedKeys()
        key = (AnomalyKind.STALE_THREAD, "t1", "r1", None, None, None)
        assert keys.add(key) is True
        assert keys.add(key) is False
        assert key in keys
        assert len(keys) == 1

    def test_reported_keys_forget_the_oldest_beyond_capacity(self) -> None:
        keys = ReportedKeys(capacity=3)
        for n in range(5):
            keys.add(n)
        assert list(keys) == [2, 3, 4]
        assert 0 not in keys
        assert keys.forgotten == 2
        assert keys.add(0) is True

    @pytest.mark.parametrize("capacity", [0, -1, 1.5, True])
    def test_reported_keys_bad_capacity_raises(self, capacity: object) -> None:
        with pytest.raises(ValueError, match="capacity must be a positive int"):
            ReportedKeys(capacity)  # type: ignore[arg-type]


def test_custom_events_are_plain_activity() -> None:
    tracker = RunTracker()
    assert feed(tracker, (started(), T0), (Custom(name="progress", value=None), T0 + 50_000)) == []
    assert tracker.advance(T0 + STALE_MS) == ()


class TestFinishedRuns:
    def test_finished_runs_full_forgets_the_oldest_and_counts_it(self) -> None:
        memory = FinishedRuns(2)
        for n in range(3):
            memory.add(("t", f"r{n}"), T0 + n)
        assert (("t", "r0") in memory, memory.get(("t", "r1")), memory.get(("t", "r2"))) == (False, T0 + 1, T0 + 2)
        assert (len(memory), memory.forgotten, memory.capacity) == (2, 1, 2)

    def test_finished_runs_keeps_a_runs_first_finish(self) -> None:
        memory = FinishedRuns()
        memory.add(("t", "r"), T0)
        memory.add(("t", "r"), T0 + 5)
        assert memory.get(("t", "r")) == T0

    @pytest.mark.parametrize("capacity", [0, -1, 1.5, True])
    def test_finished_runs_bad_capacity_rejected(self, capacity: Any) -> None:
        with pytest.raises(ValueError, match="capacity must be a positive int"):
            FinishedRuns(capacity)

    def test_tracker_records_each_finish_it_sees(self) -> None:
        memory = FinishedRuns()
        tracker = RunTracker(finished_runs=memory)
        feed(tracker, (started(), T0), (finished(), T0 + 7))
        feed(tracker, (started(run="r2"), T0), (RunError(message="x"), T0 + 8), run="r2")
        feed(tracker, (started(run="r3"), T0), (text(), T0 + 9), run="r3")
        assert (memory.get(("t1", "r1")), memory.get(("t1", "r2")), ("t1", "r3") in memory) == (T0 + 7, T0 + 8, False)


class _Target:
    """A deadline target whose entries are current while ``live`` is True."""

    def __init__(self) -> None:
        self.live = True
        self.checks = 0

    def is_current(self, due: int, tag: str | None) -> bool:
        self.checks += 1
        return self.live


class _LiveCount:
    def __init__(self) -> None:
        self.value = 0

    def count(self) -> int:
        return self.value


class TestDeadlineHeap:
    def test_deadline_heap_mostly_stale_is_compacted_when_it_doubles(self) -> None:
        heap = DeadlineHeap()
        stale = _Target()
        for due in range(1024):
            heap.push(due, stale)
        stale.live = False
        keeper = _Target()
        heap.push(5000, keeper)  # past the bound: only the live entry survives
        assert len(heap) == 1
        assert heap.pop_due(10_000) is not None

    def test_deadline_heap_mostly_live_is_not_scanned_for_nothing(self) -> None:
        live = _LiveCount()
        heap = DeadlineHeap(weakref.WeakMethod(live.count))
        target = _Target()
        for due in range(1025):
            live.value += 1
            heap.push(due, target)
        # Every entry current: no rebuild (it would keep them all), and the next check waits for twice as many.
        assert (len(heap), target.checks) == (1025, 0)
        target.live = False
        live.value = 0
        for due in range(1025, 2050):
            heap.push(due, target)
        assert len(heap) == 2050
        heap.push(2050, target)  # doubled again, and now all stale: rebuilt
        assert len(heap) == 0
        assert heap.next_deadline() is None


class TestMonitorConfigRebuildFields:
    @pytest.mark.parametrize("field", ["finished_runs", "rebuild_slice"])
    @pytest.mark.parametrize("value", [0, -3, 2.5, True])
    def test_monitor_config_bad_count_names_the_field_and_rule(self, field: str, value: object) -> None:
        with pytest.raises(ValueError, match=f"MonitorConfig.{field} must be an int >= 1"):
            MonitorConfig(**{field: value})  # type: ignore[arg-type]

    def test_monitor_memory_remembers_as_many_finished_runs_as_configured(self) -> None:
        memory = MonitorMemory(MonitorConfig(finished_runs=7))
        assert memory.finished.capacity == 7
