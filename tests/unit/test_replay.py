from __future__ import annotations

import gc
import io
import itertools
import tracemalloc
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from actors.chat._anomaly import Anomaly, AnomalyKind, Severity
from actors.chat._detection import DetectionThresholds
from supervisors._replay import (
    AnomalyRecord,
    InvalidTraceLine,
    JsonReportWriter,
    ReplayReport,
    ReplayStats,
    TableReportWriter,
    TraceReplay,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

T0 = 1_714_000_000_000
STUCK_MS = 30_000
STALE_MS = 60_000


def line(obj: dict[str, Any]) -> bytes:
    return msgspec.json.encode(obj) + b"\n"


def ids(thread: str = "t1", run: str = "r1") -> dict[str, str]:
    return {"threadId": thread, "runId": run}


def started(at: int | None, thread: str = "t1", run: str = "r1") -> bytes:
    event: dict[str, Any] = {"type": "RUN_STARTED", "threadId": thread, "runId": run}
    if at is not None:
        event["timestamp"] = at
    return line(event)


def finished(at: int, thread: str = "t1", run: str = "r1") -> bytes:
    return line({"type": "RUN_FINISHED", "threadId": thread, "runId": run, "timestamp": at})


def text(at: int | None, thread: str = "t1", run: str = "r1") -> bytes:
    event: dict[str, Any] = {
        "type": "TEXT_MESSAGE_CONTENT",
        "messageId": "m1",
        "delta": "hi",
        "metadata": ids(thread, run),
    }
    if at is not None:
        event["timestamp"] = at
    return line(event)


def tool_start(at: int, call: str = "c1", thread: str = "t1", run: str = "r1") -> bytes:
    return line(
        {
            "type": "TOOL_CALL_START",
            "toolCallId": call,
            "toolCallName": "search",
            "timestamp": at,
            "metadata": ids(thread, run),
        }
    )


def tool_end(at: int, call: str = "c1", thread: str = "t1", run: str = "r1") -> bytes:
    return line({"type": "TOOL_CALL_END", "toolCallId": call, "timestamp": at, "metadata": ids(thread, run)})


def tool_result(at: int, call: str = "c1", thread: str = "t1", run: str = "r1") -> bytes:
    return line(
        {
            "type": "TOOL_CALL_RESULT",
            "messageId": f"{call}:result",
            "toolCallId": call,
            "content": "ok",
            "timestamp": at,
            "metadata": ids(thread, run),
        }
    )


def envelope(observed_at: int | None, event: dict[str, Any], **extra: Any) -> bytes:
    obj: dict[str, Any] = {"event": event, **extra}
    if observed_at is not None:
        obj["observedAt"] = observed_at
    return line(obj)


def replay_all(*lines: bytes, drain: bool = True, **thresholds: Any) -> tuple[list[Anomaly], TraceReplay]:
    """Feed every line (they must all be valid), finish, and return the anomalies in order."""
    replay = TraceReplay(DetectionThresholds(**thresholds))
    found: list[Anomaly] = []
    for each in lines:
        found += replay.feed(each)
    found += replay.finish(drain=drain)
    return found, replay


def summary(anomalies: list[Anomaly]) -> list[tuple[AnomalyKind, str, str | None, str | None, int]]:
    return [(a.kind, a.thread_id, a.run_id, a.tool_call_id, a.detected_at) for a in anomalies]


def rejected(*lines: bytes) -> InvalidTraceLine:
    """Feed the lines; the last one must be rejected."""
    replay = TraceReplay()
    for each in lines[:-1]:
        replay.feed(each)
    with pytest.raises(InvalidTraceLine) as caught:
        replay.feed(lines[-1])
    return caught.value


class TestTraceReplayInput:
    def test_replay_bare_event_with_metadata_ids_is_observed(self) -> None:
        found, replay = replay_all(started(T0), text(T0 + 1), finished(T0 + 2))
        assert found == []
        assert replay.statistics() == ReplayStats(lines=3, events=3, invalid=0, runs=1, out_of_order=0)

    def test_replay_seed_aliases_are_accepted(self) -> None:
        found, replay = replay_all(
            line({"type": "agent_started", "thread_id": "t1", "run_id": "r1", "timestamp": T0}),
            line({"type": "tool_executing", "tool_call_id": "c1", "tool_name": "x", "thread_id": "t1", "run_id": "r1"}),
            line({"type": "tool_completed", "tool_call_id": "c1", "thread_id": "t1", "run_id": "r1"}),
            line({"type": "agent_completed", "thread_id": "t1", "run_id": "r1", "timestamp": T0 + 5}),
        )
        assert found == []
        assert replay.statistics().events == 4

    def test_replay_envelope_ids_place_an_event_that_names_none(self) -> None:
        found, _ = replay_all(
            started(T0),
            envelope(T0 + 10, {"type": "RUN_ERROR", "message": "boom"}, threadId="t1", runId="r1"),
            envelope(T0 + 20, {"type": "RUN_ERROR", "message": "again"}, threadId="t1", runId="r1"),
        )
        # Placed in t1/r1, the second error is a duplicate completion of that run.
        assert summary(found) == [(AnomalyKind.DUPLICATE_COMPLETION, "t1", "r1", None, T0 + 20)]

    def test_replay_envelope_observed_at_drives_high_latency(self) -> None:
        found, _ = replay_all(
            envelope(T0, {"type": "RUN_STARTED", "threadId": "t1", "runId": "r1", "timestamp": T0}),
            envelope(T0 + 2_001, {"type": "TEXT_MESSAGE_START", "messageId": "m", "timestamp": T0}, **ids()),
        )
        assert summary(found)[0] == (AnomalyKind.HIGH_LATENCY, "t1", "r1", None, T0 + 2_001)

    def test_replay_envelope_without_observed_at_uses_the_event_timestamp(self) -> None:
        found, replay = replay_all(
            envelope(None, {"type": "RUN_STARTED", "threadId": "t1", "runId": "r1", "timestamp": T0 + 7}),
            drain=False,
        )
        assert found == []
        assert replay.clock == T0 + 7

    def test_replay_event_containing_an_event_key_is_not_an_envelope(self) -> None:
        custom = line({"type": "CUSTOM", "name": "audit", "value": {"event": "x"}, "timestamp": T0, "metadata": ids()})
        found, replay = replay_all(started(T0), custom, finished(T0 + 1))
        assert found == []
        assert replay.statistics().invalid == 0

    def test_replay_utf8_bom_on_the_first_line_is_ignored(self) -> None:
        found, replay = replay_all(b"\xef\xbb\xbf" + started(T0), finished(T0 + 1))
        assert found == []
        assert replay.statistics().events == 2

    def test_replay_blank_lines_are_counted_and_skipped(self) -> None:
        _, replay = replay_all(started(T0), b"\n", b"   \r\n", finished(T0 + 1))
        assert replay.statistics() == ReplayStats(lines=4, events=2, invalid=0, runs=1, out_of_order=0)

    def test_replay_crlf_line_endings_are_accepted(self) -> None:
        found, _ = replay_all(started(T0).rstrip() + b"\r\n", finished(T0 + 1).rstrip() + b"\r\n")
        assert found == []


class TestTraceReplayInvalidLines:
    def test_replay_invalid_field_is_named_with_the_line_number(self) -> None:
        bad = line({"type": "TOOL_CALL_START", "toolCallId": 7, "toolCallName": "x", "metadata": ids()})
        error = rejected(started(T0), bad)
        assert str(error) == "line 2: $.toolCallId: expected str, got int"
        assert (error.line, error.error.field) == (2, "$.toolCallId")

    def test_replay_invalid_field_inside_an_envelope_is_named_under_event(self) -> None:
        error = rejected(envelope(T0, {"type": "TOOL_CALL_END", "toolCallId": 7}, **ids()))
        assert str(error) == "line 1: $.event.toolCallId: expected str, got int"

    def test_replay_unknown_envelope_field_is_rejected(self) -> None:
        error = rejected(line({"observed_at": T0, "event": {"type": "RUN_STARTED", "threadId": "t", "runId": "r"}}))
        assert error.error.field == "$.observed_at"
        assert "unknown envelope field" in error.error.rule

    def test_replay_envelope_without_event_says_so(self) -> None:
        error = rejected(line({"observedAt": T0, "evnt": {}}))
        assert error.error.field == "$.evnt"

    def test_replay_negative_observed_at_is_rejected(self) -> None:
        error = rejected(envelope(-1, {"type": "RUN_STARTED", "threadId": "t", "runId": "r"}))
        assert error.error.field == "$.observedAt"

    def test_replay_event_without_a_thread_is_rejected(self) -> None:
        error = rejected(line({"type": "RUN_ERROR", "message": "boom", "timestamp": T0}))
        assert error.error.field == "$.metadata.threadId"
        assert "RUN_ERROR" in error.error.rule

    def test_replay_event_without_a_run_in_an_envelope_is_rejected(self) -> None:
        error = rejected(envelope(T0, {"type": "RUN_ERROR", "message": "boom"}, threadId="t1"))
        assert error.error.field == "$.runId"

    def test_replay_non_string_metadata_id_is_a_type_error(self) -> None:
        bad = line({"type": "TEXT_MESSAGE_END", "messageId": "m", "metadata": {"threadId": 5, "runId": "r"}})
        error = rejected(bad)
        assert str(error.error) == "$.metadata.threadId: expected str, got int"

    def test_replay_envelope_id_conflicting_with_the_event_is_rejected(self) -> None:
        error = rejected(envelope(T0, {"type": "RUN_STARTED", "threadId": "t1", "runId": "r1"}, threadId="t2"))
        assert error.error.field == "$.threadId"
        assert "'t2'" in error.error.rule
        assert "'t1'" in error.error.rule

    def test_replay_malformed_json_is_rejected(self) -> None:
        error = rejected(b'{"type": "RUN_STARTED"\n')
        assert error.error.field is None
        assert "malformed JSON" in error.error.rule

    def test_replay_unknown_type_is_rejected(self) -> None:
        error = rejected(line({"type": "agent_exploded", "metadata": ids()}))
        assert str(error.error) == "$.type: unknown event type 'agent_exploded'"

    def test_replay_invalid_line_leaves_no_state_behind(self) -> None:
        replay = TraceReplay()
        replay.feed(started(T0))
        bad_start = line({"type": "TOOL_CALL_START", "toolCallId": "c1", "metadata": ids(), "timestamp": T0 + 1})
        with pytest.raises(InvalidTraceLine):
            replay.feed(bad_start)  # toolCallName missing
        found = list(replay.feed(finished(T0 + 2))) + list(replay.finish())
        assert found == []  # the rejected start opened no tool call that could be stuck
        assert replay.statistics() == ReplayStats(lines=3, events=2, invalid=1, runs=1, out_of_order=0)

    def test_replay_oversized_line_is_rejected_without_reading_it_whole(self) -> None:
        stream = io.BytesIO(started(T0) + b'{"type":"CUSTOM","value":"' + b"x" * 5_000 + b'"}\n' + finished(T0 + 1))
        replay = TraceReplay(max_line_bytes=200)
        items = list(replay.run(stream))
        (error,) = items
        assert isinstance(error, InvalidTraceLine)
        assert error.line == 2
        assert "over the 200-byte limit" in str(error)
        assert replay.statistics() == ReplayStats(lines=3, events=2, invalid=1, runs=1, out_of_order=0)

    def test_replay_max_line_bytes_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="max_line_bytes"):
            TraceReplay(max_line_bytes=0)

    def test_replay_feed_after_finish_raises(self) -> None:
        replay = TraceReplay()
        replay.finish()
        with pytest.raises(RuntimeError):
            replay.feed(started(T0))
        with pytest.raises(RuntimeError):
            replay.finish()


class TestTraceReplayClock:
    def test_replay_stuck_tool_is_detected_at_its_due_time_not_at_the_next_line(self) -> None:
        found, _ = replay_all(started(T0), tool_start(T0 + 100), text(T0 + 50_000), drain=False)
        assert summary(found) == [(AnomalyKind.STUCK_TOOL, "t1", "r1", "c1", T0 + 100 + STUCK_MS)]

    def test_replay_tool_with_a_result_before_its_deadline_is_not_stuck(self) -> None:
        found, _ = replay_all(started(T0), tool_start(T0), tool_result(T0 + STUCK_MS - 1), finished(T0 + STUCK_MS))
        assert found == []

    def test_replay_stale_thread_is_detected_at_last_activity_plus_threshold(self) -> None:
        found, _ = replay_all(
            started(T0), text(T0 + 5_000), started(T0 + 10_000, "t2", "r2"), finished(T0 + 69_000, "t2", "r2")
        )
        assert summary(found) == [(AnomalyKind.STALE_THREAD, "t1", "r1", None, T0 + 5_000 + STALE_MS)]

    def test_replay_deadlines_fire_in_order_before_the_line_that_passes_them(self) -> None:
        found, _ = replay_all(
            started(T0),
            tool_start(T0 + 1, "late"),
            tool_start(T0 + 0, "early", "t2", "r2"),
            text(T0 + 100_000, "t3", "r3"),
            drain=False,
        )
        detected = [a.detected_at for a in found]
        assert detected == sorted(detected)
        assert summary(found)[-1] == (AnomalyKind.MISSING_AGENT_STARTED, "t3", "r3", None, T0 + 100_000)

    def test_replay_drain_reports_what_is_still_open_at_the_end(self) -> None:
        found, replay = replay_all(started(T0), tool_start(T0 + 500))
        assert summary(found) == [
            (AnomalyKind.STUCK_TOOL, "t1", "r1", "c1", T0 + 500 + STUCK_MS),
            (AnomalyKind.STALE_THREAD, "t1", "r1", None, T0 + 500 + STALE_MS),
        ]
        assert replay.clock == T0 + 500 + STALE_MS

    def test_replay_drain_horizon_follows_the_largest_threshold(self) -> None:
        found, _ = replay_all(started(T0), tool_start(T0), stuck_tool_after=90.0, stale_thread_after=10.0)
        assert summary(found) == [
            (AnomalyKind.STALE_THREAD, "t1", "r1", None, T0 + 10_000),
            (AnomalyKind.STUCK_TOOL, "t1", "r1", "c1", T0 + 90_000),
        ]

    def test_replay_without_drain_reports_nothing_after_the_last_line(self) -> None:
        found, replay = replay_all(started(T0), tool_start(T0 + 500), drain=False)
        assert found == []
        assert replay.clock == T0 + 500

    def test_replay_late_line_is_observed_at_the_clock_and_counted(self) -> None:
        replay = TraceReplay()
        replay.feed(started(T0 + 10_000))
        replay.feed(started(T0, "t2", "r2"))  # 10 s late: a concatenated trace
        assert replay.clock == T0 + 10_000
        assert replay.statistics().out_of_order == 1

    def test_replay_late_bare_line_is_not_flagged_as_high_latency(self) -> None:
        found, _ = replay_all(started(T0 + 10_000), started(T0, "t2", "r2"), drain=False)
        assert found == []

    def test_replay_late_envelope_keeps_its_own_lag(self) -> None:
        event = {"type": "TEXT_MESSAGE_START", "messageId": "m", "timestamp": T0}
        found, _ = replay_all(
            started(T0 + 10_000),
            started(T0, "t2", "r2"),
            envelope(T0 + 1_000, event, **ids("t2", "r2")),  # lag 1 s: fine, even observed at +10 s
            envelope(T0 + 2_500, event, **ids("t3", "r3")),  # lag 2.5 s: high latency
            drain=False,
        )
        assert [(a.kind, a.thread_id, a.detected_at) for a in found if a.kind is AnomalyKind.HIGH_LATENCY] == [
            (AnomalyKind.HIGH_LATENCY, "t3", T0 + 10_000)
        ]

    def test_replay_late_line_does_not_fire_deadlines_early(self) -> None:
        found, _ = replay_all(started(T0 + 40_000), tool_start(T0, "c1", "t2", "r2"), drain=False)
        # Started "at" T0 but observed at +40 s: its 30 s deadline counts from +40 s.
        assert [a.kind for a in found] == [AnomalyKind.MISSING_AGENT_STARTED]

    def test_replay_untimed_lines_are_observed_at_the_current_clock(self) -> None:
        found, replay = replay_all(started(T0), text(None), tool_start(T0 + 1), drain=False)
        assert found == []
        assert replay.clock == T0 + 1

    def test_replay_untimed_trace_runs_on_a_clock_from_zero(self) -> None:
        found, replay = replay_all(started(None), text(None))
        assert summary(found) == [(AnomalyKind.STALE_THREAD, "t1", "r1", None, STALE_MS)]
        assert replay.origin is None

    def test_replay_origin_is_the_first_timed_line(self) -> None:
        _, replay = replay_all(started(None), text(T0 + 3), text(T0 + 9), drain=False)
        assert replay.origin == T0 + 3


class TestTraceReplayStatistics:
    def test_replay_counts_distinct_runs_across_threads(self) -> None:
        _, replay = replay_all(
            started(T0), started(T0, "t2", "r2"), text(T0, "t2", "r2"), finished(T0 + 1), finished(T0 + 1, "t2", "r2")
        )
        assert replay.statistics().runs == 2

    def test_replay_counts_interleaved_runs_of_one_thread_once_each(self) -> None:
        _, replay = replay_all(
            started(T0, "t1", "a"),
            started(T0, "t1", "b"),
            text(T0, "t1", "a"),
            text(T0, "t1", "b"),
            started(T0, "t1", "a"),  # a duplicate start is not a new run
            drain=False,
        )
        assert replay.statistics().runs == 2

    def test_replay_numbers_events_per_thread(self) -> None:
        found, _ = replay_all(
            started(T0), text(T0, "t2", "r2"), started(T0), tool_end(T0 + 1), finished(T0 + 2), drain=False
        )
        orphan = next(a for a in found if a.kind is AnomalyKind.ORPHAN_TOOL_COMPLETED)
        assert "(seq 3)" in orphan.detail  # t1's third event; t2's event has its own numbering


def generated_trace(lines: int) -> Iterator[bytes]:
    """A long clean trace, made as it is read: runs of 10 events on 200 threads, 10 ms apart."""
    now = T0
    for number in range(lines // 10):
        thread, run = f"t{number % 200}", f"r{number}"
        yield started(now, thread, run)
        for _ in range(8):
            now += 10
            yield text(now, thread, run)
        now += 10
        yield finished(now, thread, run)


class _GeneratedStream(io.RawIOBase):
    """A binary stream over a generated trace: the whole trace never exists in memory at once."""

    def __init__(self, lines: int) -> None:
        self._lines = generated_trace(lines)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            self._pending = memoryview(b"".join(itertools.islice(self._lines, 100)))
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def peak_memory_of_replay(lines: int) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        replay = TraceReplay(DetectionThresholds(retention=5.0))
        for item in replay.run(io.BufferedReader(_GeneratedStream(lines))):
            assert not isinstance(item, InvalidTraceLine), item
        assert replay.statistics().events == lines
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class TestTraceReplayMemory:
    def test_replay_memory_stays_flat_as_the_trace_grows(self) -> None:
        short = peak_memory_of_replay(10_000)
        long = peak_memory_of_replay(100_000)
        # Ten times the lines (~20 MB of trace), the same peak: finished runs leave the tracker after `retention`
        # of trace time, idle threads leave the replay's seq table, and nothing keeps the lines read.
        assert long < short + 256 * 1024, (short, long)
        assert long < 4 * 1024 * 1024, long


class TestReportWriters:
    def anomalies(self) -> list[Anomaly]:
        found, _ = replay_all(started(T0), tool_start(T0 + 1), tool_end(T0 + 2, "zz"))
        return found

    def test_json_writer_output_decodes_to_the_report(self) -> None:
        anomalies = self.anomalies()
        out = io.StringIO()
        writer = JsonReportWriter(out)
        for anomaly in anomalies:
            writer.anomaly(anomaly, T0)
        stats = ReplayStats(lines=3, events=3, invalid=0, runs=1, out_of_order=0)
        writer.close(stats, drained=True)
        decoded = msgspec.json.decode(out.getvalue(), type=ReplayReport)
        assert decoded == ReplayReport(
            version=1, anomalies=[AnomalyRecord.from_anomaly(a) for a in anomalies], stats=stats
        )
        document = msgspec.json.decode(out.getvalue())
        assert "stopped" not in document
        assert [a["toolCallId"] for a in document["anomalies"]] == ["zz", "c1", None]

    def test_json_writer_with_no_anomalies_writes_an_empty_list(self) -> None:
        out = io.StringIO()
        JsonReportWriter(out).close(ReplayStats(lines=0, events=0, invalid=0, runs=0, out_of_order=0), drained=True)
        assert msgspec.json.decode(out.getvalue())["anomalies"] == []

    def test_json_writer_says_why_it_stopped(self) -> None:
        out = io.StringIO()
        writer = JsonReportWriter(out)
        writer.close(ReplayStats(lines=2, events=1, invalid=1, runs=1, out_of_order=0), drained=False, stopped="x")
        assert msgspec.json.decode(out.getvalue())["stopped"] == "x"

    def test_table_writer_writes_a_header_rows_and_a_summary(self) -> None:
        out = io.StringIO()
        writer = TableReportWriter(out)
        for anomaly in self.anomalies():
            writer.anomaly(anomaly, T0)
        writer.close(ReplayStats(lines=3, events=3, invalid=0, runs=1, out_of_order=0), drained=True)
        lines = out.getvalue().splitlines()
        assert lines[0].split() == ["AT", "KIND", "SEVERITY", "THREAD", "RUN", "TOOL", "CALL", "DETAIL"]
        assert lines[1].split()[:6] == ["+0.002s", "orphan_tool_completed", "warning", "t1", "r1", "zz"]
        assert lines[3].split()[:6] == ["+60.002s", "stale_thread", "critical", "t1", "r1", "-"]
        assert "3 anomalies (1 orphan_tool_completed, 1 stale_thread, 1 stuck_tool) in 3 lines" in lines[5]

    def test_table_writer_without_anomalies_says_so(self) -> None:
        out = io.StringIO()
        TableReportWriter(out).close(ReplayStats(lines=1, events=1, invalid=0, runs=1, out_of_order=0), drained=False)
        text = out.getvalue()
        assert text.startswith("No anomalies in 1 line: 1 event, 0 invalid")
        assert "--no-drain" in text

    def test_anomaly_record_keeps_the_report_fields(self) -> None:
        anomaly = Anomaly(
            kind=AnomalyKind.STUCK_TOOL,
            severity=Severity.CRITICAL,
            thread_id="t",
            run_id="r",
            tool_call_id="c",
            detected_at=5,
            detail="d",
        )
        assert msgspec.json.decode(msgspec.json.encode(AnomalyRecord.from_anomaly(anomaly))) == {
            "kind": "stuck_tool",
            "severity": "critical",
            "threadId": "t",
            "runId": "r",
            "toolCallId": "c",
            "detectedAt": 5,
            "detail": "d",
        }
