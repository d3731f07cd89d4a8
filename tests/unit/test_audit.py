from __future__ import annotations

from typing import Any

import pytest

from actors.chat._audit import (
    AuditPolicy,
    AuditVerdict,
    FlowVerdict,
    FlowWindow,
    cross_validate,
    flow_judgeable,
    judge_flow,
)
from actors.chat._components import ComponentReport

POLICY = AuditPolicy()  # min_routed 10, min_delivery_ratio 0.1


def window(routed: int = 0, delivered: int = 0) -> FlowWindow:
    flow = FlowWindow()
    flow.routed = routed
    flow.delivered = delivered
    return flow


def healthy(**metrics: Any) -> ComponentReport:
    return ComponentReport(
        component_id="bridge", audit_id=1, status="healthy", health={"status": "healthy"}, metrics=metrics
    )


class TestFlowWindowStalls:
    def test_undelivered_event_stalls_its_thread_until_a_confirmation_reaches_its_first_seq(self) -> None:
        flow = FlowWindow()
        flow.delivery_stalled("t1", 40)
        flow.delivery_stalled("t1", 55)  # a later report for the same thread keeps the first seq
        assert (flow.stalled, flow.overdue) == ({"t1": 40}, 2)
        flow.delivery_progressed({"t1": 39})
        assert flow.stalled == {"t1": 40}
        flow.delivery_progressed({"t1": 40})
        assert flow.stalled == {}

    def test_stall_ends_when_the_thread_loses_its_last_connection(self) -> None:
        flow = FlowWindow()
        flow.delivery_stalled("t1", 3)
        flow.delivery_stalled("t2", 8)
        flow.delivery_progressed({"t3": 100}, ["t2"])
        assert flow.stalled == {"t1": 3}

    def test_progress_checked_from_the_smaller_side_either_way(self) -> None:
        flow = FlowWindow()
        for index in range(5):
            flow.delivery_stalled(f"t{index}", 10)
        flow.delivery_progressed({"t0": 10, "t1": 9})  # fewer confirmations than stalls
        assert set(flow.stalled) == {"t1", "t2", "t3", "t4"}
        flow.delivery_progressed({f"x{i}": 1 for i in range(10)} | {"t2": 11, "t4": 10})  # more
        assert set(flow.stalled) == {"t1", "t3"}

    def test_stalls_outlive_the_window_reset(self) -> None:
        flow = window(routed=50, delivered=40)
        flow.delivery_stalled("t1", 7)
        flow.reset()
        assert (flow.routed, flow.delivered, flow.overdue, flow.stalled) == (0, 0, 0, {"t1": 7})

    def test_counts_since_the_stall_span_window_resets_and_exclude_what_came_before(self) -> None:
        flow = window(routed=30, delivered=30)
        assert (flow.routed_since_stall, flow.delivered_since_stall) == (0, 0)
        flow.delivery_stalled("t1", 31)
        flow.routed += 5
        flow.delivered += 1
        flow.reset()
        flow.routed += 7
        assert (flow.routed_since_stall, flow.delivered_since_stall) == (12, 1)
        flow.delivery_progressed({"t1": 31})
        assert (flow.routed_since_stall, flow.delivered_since_stall) == (0, 0)
        # A new stall counts from its own start.
        flow.delivery_stalled("t2", 4)
        flow.routed += 2
        assert (flow.routed_since_stall, flow.delivered_since_stall) == (2, 0)

    def test_oldest_stall_forgotten_beyond_the_cap(self) -> None:
        flow = FlowWindow(max_stalled=2)
        for thread_id in ("a", "b", "c"):
            flow.delivery_stalled(thread_id, 1)
        assert list(flow.stalled) == ["b", "c"]

    @pytest.mark.parametrize("value", [0, -1, True, 1.5])
    def test_bad_max_stalled_names_the_field(self, value: object) -> None:
        with pytest.raises(ValueError, match=r"FlowWindow.max_stalled must be an int >= 1"):
            FlowWindow(max_stalled=value)  # type: ignore[arg-type]


class TestJudgeFlow:
    def test_too_few_routed_events_unjudgeable_even_when_stalled(self) -> None:
        flow = window(routed=9)
        flow.delivery_stalled("t1", 1)
        assert judge_flow(flow, POLICY) == (FlowVerdict.UNJUDGEABLE, "")
        assert not flow_judgeable(flow, POLICY)

    def test_events_in_flight_without_a_stall_unjudgeable(self) -> None:
        # A burst just before the audit: routed, not confirmed yet, nothing overdue.
        assert judge_flow(window(routed=30, delivered=0), POLICY)[0] is FlowVerdict.UNJUDGEABLE

    def test_enough_delivered_is_delivering_at_the_ratio_boundary(self) -> None:
        assert judge_flow(window(routed=100, delivered=10), POLICY)[0] is FlowVerdict.DELIVERING
        assert judge_flow(window(routed=100, delivered=9), POLICY)[0] is FlowVerdict.UNJUDGEABLE

    def test_backlog_delivered_with_nothing_routed_or_stalled_is_delivering(self) -> None:
        assert judge_flow(window(routed=0, delivered=10), POLICY)[0] is FlowVerdict.DELIVERING
        assert judge_flow(window(routed=3, delivered=9), POLICY)[0] is FlowVerdict.UNJUDGEABLE
        flow = window(routed=0, delivered=50)
        flow.delivery_stalled("t1", 1)  # but some thread is still stalled: not proof of health
        assert judge_flow(flow, POLICY)[0] is FlowVerdict.UNJUDGEABLE

    def test_stalled_with_nothing_delivered_in_the_window_is_stalled(self) -> None:
        flow = window(routed=0)
        flow.delivery_stalled("t1", 5)  # began before this window (an earlier window straddled the onset)
        flow.reset()
        flow.routed = 80
        verdict, finding = judge_flow(flow, POLICY)
        assert verdict is FlowVerdict.STALLED
        assert finding.startswith("claims healthy but delivered 0 of 80 events routed to connections")
        assert "1 thread with undelivered events" in finding

    # Regression: a window that straddled the onset (deliveries from before it >= 10% of the routed events) was
    # judged consistent, though nothing had been delivered since the stall began.
    def test_window_straddling_the_onset_judged_on_what_came_since_the_stall(self) -> None:
        flow = window(routed=60, delivered=60)  # before the onset
        flow.delivery_stalled("t1", 61)
        flow.delivery_stalled("t2", 30)
        flow.routed += 20  # since: nothing delivered
        verdict, finding = judge_flow(flow, POLICY)
        assert verdict is FlowVerdict.STALLED
        assert "delivered 0 of 20 events routed to connections since its delivery stalled" in finding
        assert "2 threads" in finding

    def test_one_stalled_thread_among_delivering_ones_is_delivering(self) -> None:
        # A slow client holds one thread back; the others deliver all along (since the stall too).
        flow = window(routed=40, delivered=40)
        flow.delivery_stalled("slow", 12)
        flow.routed += 40
        flow.delivered += 30
        assert judge_flow(flow, POLICY)[0] is FlowVerdict.DELIVERING

    def test_failure_beginning_during_a_long_stall_judged_on_the_window(self) -> None:
        # One thread stalled for long (honest deliveries since), then everything stops: the window shows it.
        flow = window(routed=10)
        flow.delivery_stalled("slow", 1)
        flow.routed += 500
        flow.delivered += 500
        flow.reset()
        flow.routed = 40
        verdict, finding = judge_flow(flow, POLICY)
        assert verdict is FlowVerdict.STALLED
        assert "delivered 0 of 40 events routed to connections since the last audit" in finding


class TestCrossValidate:
    def test_healthy_claim_over_a_stalled_flow_is_a_mismatch(self) -> None:
        flow = window(routed=20)
        flow.delivery_stalled("t1", 1)
        result = cross_validate(healthy(), flow=flow, policy=POLICY, at=5)
        assert (result.verdict, result.at, result.claimed) == (AuditVerdict.MISMATCH, 5, "healthy")
        assert result.findings[0].startswith("claims healthy but delivered 0 of 20")

    @pytest.mark.parametrize("status", ["degraded", "unhealthy", "critical", "unknown"])
    def test_admitting_trouble_over_a_stalled_flow_is_consistent(self, status: str) -> None:
        flow = window(routed=20)
        flow.delivery_stalled("t1", 1)
        report = ComponentReport(component_id="bridge", audit_id=1, status=status, health={}, metrics={})
        assert cross_validate(report, flow=flow, policy=POLICY, at=0).verdict is AuditVerdict.CONSISTENT

    def test_without_flow_only_the_metrics_are_judged(self) -> None:
        assert cross_validate(healthy(), flow=None, policy=POLICY, at=0).verdict is AuditVerdict.CONSISTENT
        result = cross_validate(healthy(error_rate=0.6), flow=None, policy=POLICY, at=0)
        assert result.verdict is AuditVerdict.MISMATCH
        assert result.findings == ("claims healthy but reports error_rate 0.60 > 0.50",)

    def test_report_that_failed_to_read_is_failed_not_judged(self) -> None:
        flow = window(routed=20)
        flow.delivery_stalled("t1", 1)
        report = ComponentReport(
            component_id="bridge", audit_id=3, status="unknown", health={}, metrics={}, error="OSError: x"
        )
        result = cross_validate(report, flow=flow, policy=POLICY, at=0)
        assert (result.verdict, result.findings) == (AuditVerdict.FAILED, ("reading its health raised OSError: x",))
