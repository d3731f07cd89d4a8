from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

ROOT = Path(__file__).resolve().parents[2]
TRACES = Path(__file__).with_name("traces")
T0 = 1_714_000_000_000  # the hand-written traces start here (ms)

# (kind, threadId, runId, toolCallId, detectedAt): what identifies one anomaly in the report.
Found = tuple[str, str, str | None, str | None, int]


def agentwatch(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "supervisors.cli", *map(str, args)],
        cwd=ROOT,
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def report(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.json.decode(result.stdout)
    return decoded


def found(result: subprocess.CompletedProcess[str]) -> list[Found]:
    return [
        (a["kind"], a["threadId"], a["runId"], a["toolCallId"], a["detectedAt"]) for a in report(result)["anomalies"]
    ]


class TestReplayDetectsEachKind:
    @pytest.mark.parametrize(
        ("trace", "expected"),
        [
            pytest.param("clean.jsonl", [], id="clean"),
            pytest.param("clean_seed_aliases.jsonl", [], id="clean-seed-aliases"),
            pytest.param("clean_envelopes.jsonl", [], id="clean-envelopes"),
            pytest.param(
                "missing_agent_started.jsonl",
                [("missing_agent_started", "t1", "r1", None, T0 + 1_000)],
                id="missing_agent_started",
            ),
            pytest.param(
                "orphan_tool_completed.jsonl",
                [("orphan_tool_completed", "t1", "r1", "call-9", T0 + 2_500)],
                id="orphan_tool_completed",
            ),
            # Due 30 s after the start at +1 s: detected then, not at the next line (+40 s).
            pytest.param("stuck_tool.jsonl", [("stuck_tool", "t1", "r1", "call-1", T0 + 31_000)], id="stuck_tool"),
            # Due 60 s after r1's last event (+2 s), while r2's events still run; the drain adds nothing.
            pytest.param("stale_thread.jsonl", [("stale_thread", "t1", "r1", None, T0 + 62_000)], id="stale_thread"),
            # A lag of exactly 2 s is fine, 2.5 s is not, and a run is flagged once.
            pytest.param("high_latency.jsonl", [("high_latency", "t1", "r1", None, T0 + 3_500)], id="high_latency"),
            pytest.param(
                "duplicate_completion.jsonl",
                [("duplicate_completion", "t1", "r1", None, T0 + 1_500)],
                id="duplicate_completion",
            ),
            pytest.param(
                "event_after_completion.jsonl",
                [("event_after_completion", "t1", "r1", None, T0 + 2_000)],
                id="event_after_completion",
            ),
            pytest.param("error_burst.jsonl", [("error_burst", "*", None, None, T0 + 5_000)], id="error_burst"),
            # Lines 3-5 are earlier than the clock (+5 s): observed at it, each with its own lag.
            pytest.param("out_of_order.jsonl", [("high_latency", "t2", "r2", None, T0 + 5_000)], id="out_of_order"),
        ],
    )
    def test_replay_trace_reports_exactly_the_expected_anomalies(self, trace: str, expected: list[Found]) -> None:
        result = agentwatch("replay", TRACES / trace, "--json")
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert found(result) == expected

    def test_replay_report_has_the_documented_schema(self) -> None:
        result = agentwatch("replay", TRACES / "orphan_tool_completed.jsonl", "--json")
        document = report(result)
        assert document["version"] == 1
        assert document["stats"] == {"lines": 5, "events": 5, "invalid": 0, "runs": 1, "outOfOrder": 0}
        (anomaly,) = document["anomalies"]
        assert list(anomaly) == ["kind", "severity", "threadId", "runId", "toolCallId", "detectedAt", "detail"]
        assert anomaly["severity"] == "warning"
        # The replay numbers each thread's events as the bridge would: the orphan END is the thread's 4th event.
        assert "(seq 4)" in anomaly["detail"]

    def test_replay_tool_call_id_is_null_for_kinds_about_a_run(self) -> None:
        document = report(agentwatch("replay", TRACES / "missing_agent_started.jsonl", "--json"))
        assert document["anomalies"][0]["toolCallId"] is None

    def test_replay_counts_out_of_order_lines(self) -> None:
        document = report(agentwatch("replay", TRACES / "out_of_order.jsonl", "--json"))
        assert document["stats"]["outOfOrder"] == 3

    def test_replay_docs_example_reports_what_docs_show(self) -> None:
        result = agentwatch("replay", ROOT / "docs" / "examples" / "trace.jsonl", "--json")
        assert result.returncode == 0, result.stderr
        assert found(result) == [
            ("high_latency", "t-carol", "run-3", None, T0 + 7_500),
            ("missing_agent_started", "t-dave", "run-4", None, T0 + 8_000),
            ("orphan_tool_completed", "t-dave", "run-4", "call-9", T0 + 8_000),
            ("stuck_tool", "t-bob", "run-2", "call-2", T0 + 32_500),
            ("stale_thread", "t-bob", "run-2", None, T0 + 62_500),
        ]


class TestReplayDrain:
    def test_replay_drains_pending_deadlines_at_their_due_times(self) -> None:
        result = agentwatch("replay", TRACES / "open_at_end.jsonl", "--json")
        assert found(result) == [
            ("stuck_tool", "t1", "r1", "call-1", T0 + 30_500),
            ("stale_thread", "t1", "r1", None, T0 + 60_500),
        ]

    def test_replay_no_drain_reports_only_the_traces_own_time_span(self) -> None:
        result = agentwatch("replay", TRACES / "open_at_end.jsonl", "--json", "--no-drain")
        assert result.returncode == 0
        assert found(result) == []


class TestReplayBadLines:
    def test_replay_bad_lines_are_reported_on_stderr_counted_and_skipped(self) -> None:
        result = agentwatch("replay", TRACES / "bad_lines.jsonl", "--json")
        assert result.returncode == 0
        assert result.stderr.splitlines() == [
            "line 2: malformed JSON: Input data was truncated",
            "line 3: $.toolCallId: expected str, got int",
            "line 5: $.metadata.threadId: missing: a TEXT_MESSAGE_START event names no thread itself; set it here "
            "or wrap the line in an envelope",
        ]
        document = report(result)
        assert document["stats"] == {"lines": 8, "events": 4, "invalid": 3, "runs": 1, "outOfOrder": 0}
        # The rejected TOOL_CALL_START left nothing behind: no stuck tool, and the run is otherwise clean.
        assert document["anomalies"] == []

    def test_replay_strict_stops_at_the_first_bad_line_with_exit_1(self) -> None:
        result = agentwatch("replay", TRACES / "bad_lines.jsonl", "--json", "--strict")
        assert result.returncode == 1
        assert "line 2: malformed JSON" in result.stderr
        assert "line 3" not in result.stderr
        document = report(result)  # still one valid JSON object
        assert document["stopped"].startswith("--strict: line 2:")
        assert document["stats"]["lines"] == 2

    def test_replay_strict_on_a_clean_trace_exits_0(self) -> None:
        result = agentwatch("replay", TRACES / "clean.jsonl", "--json", "--strict")
        assert result.returncode == 0
        assert "stopped" not in report(result)


class TestReplayInput:
    def test_replay_reads_stdin_when_file_is_dash(self) -> None:
        trace = (TRACES / "stuck_tool.jsonl").read_bytes()
        result = agentwatch("replay", "-", "--json", stdin=trace)
        assert result.returncode == 0, result.stderr
        assert found(result) == [("stuck_tool", "t1", "r1", "call-1", T0 + 31_000)]

    def test_replay_missing_file_is_a_usage_error(self) -> None:
        result = agentwatch("replay", TRACES / "no-such-trace.jsonl")
        assert result.returncode == 2
        assert "no-such-trace.jsonl: no such file" in result.stderr
        assert result.stdout == ""

    def test_replay_without_a_file_is_a_usage_error(self) -> None:
        result = agentwatch("replay")
        assert result.returncode == 2
        assert "FILE" in result.stderr


class TestReplayThresholds:
    def test_replay_threshold_flag_changes_detection(self) -> None:
        result = agentwatch("replay", TRACES / "stuck_tool.jsonl", "--json", "--stuck-tool-after", "5")
        assert found(result) == [("stuck_tool", "t1", "r1", "call-1", T0 + 6_000)]

    def test_replay_high_latency_flag_accepts_fractional_seconds(self) -> None:
        result = agentwatch("replay", TRACES / "clean_envelopes.jsonl", "--json", "--high-latency-after", "0.5")
        # r1's TEXT_MESSAGE_START lagged 2000 ms; r2's tool_executing 100 ms.
        assert found(result) == [("high_latency", "t1", "r1", None, T0 + 3_000)]

    @pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
    def test_replay_bad_threshold_is_a_usage_error_naming_the_flag(self, value: str) -> None:
        result = agentwatch("replay", TRACES / "clean.jsonl", "--stale-thread-after", value)
        assert result.returncode == 2
        assert "--stale-thread-after" in result.stderr
        assert "seconds" in result.stderr

    def test_replay_config_file_sets_thresholds_and_flags_win(self, tmp_path: Path) -> None:
        config = tmp_path / "agentwatch.toml"
        # The runtime's config file: the thresholds live where `serve --config` reads them.
        config.write_text("[monitor.thresholds]\nstuck_tool_after = 5\nstale_thread_after = 20\n")
        from_config = agentwatch("replay", TRACES / "stuck_tool.jsonl", "--json", "--config", config)
        assert found(from_config) == [("stuck_tool", "t1", "r1", "call-1", T0 + 6_000)]
        overridden = agentwatch(
            "replay", TRACES / "stuck_tool.jsonl", "--json", "--config", config, "--stuck-tool-after", "10"
        )
        assert found(overridden) == [("stuck_tool", "t1", "r1", "call-1", T0 + 11_000)]

    def test_replay_bad_config_is_a_usage_error_naming_the_key(self, tmp_path: Path) -> None:
        config = tmp_path / "agentwatch.toml"
        config.write_text('[monitor.thresholds]\nstuck_tool_after = "soon"\n')
        result = agentwatch("replay", TRACES / "clean.jsonl", "--config", config)
        assert result.returncode == 2
        assert "$.monitor.thresholds.stuck_tool_after" in result.stderr
        assert result.stdout == ""

    def test_replay_config_value_out_of_range_is_a_usage_error_stating_the_rule(self, tmp_path: Path) -> None:
        config = tmp_path / "agentwatch.toml"
        config.write_text("[monitor.thresholds]\nstuck_tool_after = -3\n")
        result = agentwatch("replay", TRACES / "clean.jsonl", "--config", config)
        assert result.returncode == 2
        assert "stuck_tool_after must be a positive finite number of seconds" in result.stderr

    def test_replay_missing_config_is_a_usage_error(self, tmp_path: Path) -> None:
        result = agentwatch("replay", TRACES / "clean.jsonl", "--config", tmp_path / "none.toml")
        assert result.returncode == 2
        assert "none.toml" in result.stderr
        assert "No such file" in result.stderr


class TestReplayOutput:
    def test_replay_table_lists_each_anomaly_and_a_summary(self) -> None:
        result = agentwatch("replay", TRACES / "stuck_tool.jsonl")
        assert result.returncode == 0
        lines = result.stdout.splitlines()
        assert lines[0].split()[:3] == ["AT", "KIND", "SEVERITY"]
        assert lines[1].split()[:6] == ["+31.000s", "stuck_tool", "critical", "t1", "r1", "call-1"]
        assert "1 anomaly (1 stuck_tool) in 6 lines: 6 events, 0 invalid" in result.stdout

    def test_replay_table_says_when_there_is_nothing_to_report(self) -> None:
        result = agentwatch("replay", TRACES / "clean.jsonl")
        assert result.returncode == 0
        assert result.stdout.startswith("No anomalies in 19 lines: 19 events, 0 invalid, 0 blank")

    def test_replay_fail_on_anomaly_exits_1_only_when_one_is_found(self) -> None:
        assert agentwatch("replay", TRACES / "stuck_tool.jsonl", "--fail-on-anomaly").returncode == 1
        assert agentwatch("replay", TRACES / "clean.jsonl", "--fail-on-anomaly").returncode == 0


class TestDispatcher:
    def test_no_subcommand_prints_help_and_exits_2(self) -> None:
        result = agentwatch()
        assert result.returncode == 2
        assert "replay" in result.stderr

    def test_help_lists_replay_and_exits_0(self) -> None:
        result = agentwatch("--help")
        assert result.returncode == 0
        assert "replay" in result.stdout
