from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.sim._faults import FAULT_CATALOG, SCENARIO_KINDS

ROOT = Path(__file__).resolve().parents[2]


def agentwatch(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "supervisors.cli", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def demo() -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``simulate --preset demo --json``, run once for the tests that read its report."""
    result = agentwatch("simulate", "--preset", "demo", "--json")
    report: dict[str, Any] = msgspec.json.decode(result.stdout)
    return result, report


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {criterion["name"]: criterion for criterion in report["criteria"]}


class TestDemoPreset:
    def test_demo_json_versioned_report_with_every_fault_applied(
        self, demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]]
    ) -> None:
        _, report = demo
        assert report["version"] == 1
        assert (report["preset"], report["clock"], report["interrupted"]) == ("demo", "virtual", False)
        applied = {fault["name"]: fault["applied"] for fault in report["faults"]}
        assert set(applied) == set(FAULT_CATALOG)
        assert all(count >= 1 for count in applied.values()), applied
        assert set(report["wall"]) >= {"backend", "seconds", "eventsPerSecond"}

    def test_demo_every_scenario_detected_with_recall_1_and_no_false_positives(
        self, demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]]
    ) -> None:
        _, report = demo
        kinds = {score["kind"]: score for score in report["detection"]["kinds"]}
        for kind in (*SCENARIO_KINDS, "health_claim_mismatch"):
            score = kinds[kind]
            assert score["injected"] >= 1, kind
            assert (score["recall"], score["precision"], score["falsePositives"]) == (1.0, 1.0, 0), kind
            assert by_name(report)[f"detect.{kind}"]["passed"], kind

    def test_demo_every_event_delivered_in_order_bridge_never_restarted(
        self, demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]]
    ) -> None:
        _, report = demo
        criteria = by_name(report)
        for name in (
            "events.conserved",
            "deliveries.conserved",
            "clients.in_order",
            "clients.complete",
            "bridge.never_restarted",
            "monitor.recovered",
            "monitor.hang_cancelled",
            "alerts.all_dispatched",
        ):
            assert criteria[name]["passed"], criteria[name]
        clients = report["clientTotals"]
        assert clients["resumes"] > 0
        assert clients["missing"] == clients["duplicates"] == 0

    # Regression: the runtime reported one false undelivered_event after the monitor hang (see
    # tests/behaviour/test_simulation.py, test_simulation_monitor_hang_no_false_undelivered_event).
    def test_demo_passes_every_criterion_exit_0(
        self, demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]]
    ) -> None:
        result, report = demo
        assert [criterion["name"] for criterion in report["criteria"] if not criterion["passed"]] == []
        assert report["passed"]
        assert result.returncode == 0


class TestExitCodes:
    def test_simulate_failed_criterion_exit_1_names_it(self) -> None:
        # A scenario scheduled too late to land in any run: "planned but never injected" is a failure.
        result = agentwatch("simulate", "--duration", "60", "--threads", "2", "--clients", "1", "--fault",
                            "stuck_tool:at=59.9s")  # fmt: skip
        assert result.returncode == 1
        assert "FAILED detect.stuck_tool: planned but never injected" in result.stderr
        assert "FAIL  detect.stuck_tool" in result.stdout

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            ("monitor_crash:5%", "monitor_crash: 5% is a share, but monitor_crash acts at scheduled times"),
            ("stuck_tol:2%", "unknown fault 'stuck_tol'"),
            ("error_burst:every=30s", "error_burst: bursts must be at least 121.1 s apart"),
        ],
    )
    def test_simulate_bad_fault_usage_error_exit_2(self, spec: str, message: str) -> None:
        result = agentwatch("simulate", "--duration", "10m", "--fault", spec)
        assert result.returncode == 2
        assert message in result.stderr
        assert result.stdout == ""

    def test_simulate_ctrl_c_writes_partial_report_exit_130(self, tmp_path: Path) -> None:
        report_file = tmp_path / "partial.json"
        process = subprocess.Popen(
            [sys.executable, "-m", "supervisors.cli", "simulate", "--preset", "soak", "--report", str(report_file)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stderr is not None
            # Printed once the Ctrl-C handler is installed.
            assert "Ctrl-C stops it" in process.stderr.readline()
            process.send_signal(signal.SIGINT)
            stdout, stderr = process.communicate(timeout=60)
        finally:
            process.kill()
        assert process.returncode == 130, stderr
        assert "interrupted; the report is partial" in stderr
        assert "[INTERRUPTED]" in stdout
        partial: dict[str, Any] = msgspec.json.decode(report_file.read_bytes())
        assert partial["interrupted"] is True
        assert partial["passed"] is False
        assert partial["simulatedS"] < partial["durationS"]


class TestMonitorIsolationFlag:
    def test_process_isolation_on_virtual_clock_is_a_usage_error_naming_the_rule(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "supervisors.cli", "simulate", "--monitor-isolation", "process", "--duration", "10"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2
        assert "--monitor-isolation process needs --clock real" in result.stderr

    def test_process_isolated_monitor_detects_a_stuck_tool_end_to_end(self) -> None:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "supervisors.cli",
                "simulate",
                "--clock",
                "real",
                "--duration",
                "20",
                "--threads",
                "5",
                "--clients",
                "3",
                "--monitor-isolation",
                "process",
                "--fault",
                "stuck_tool:30%",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        report = msgspec.json.decode(result.stdout)
        kinds = {score["kind"]: score for score in report["detection"]["kinds"]}
        assert kinds["stuck_tool"]["injected"] >= 1
        assert kinds["stuck_tool"]["truePositives"] == kinds["stuck_tool"]["injected"]
