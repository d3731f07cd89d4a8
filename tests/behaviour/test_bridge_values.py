# Pure logic of the bridge (no event loop): config validation, coalescing, the latency histogram, health judgement.
from __future__ import annotations

import math
from collections import deque
from typing import Any

import pytest

from actors.chat._bridge_messages import BridgeConfig
from actors.chat._coalescing import coalesce
from actors.chat._events import (
    AgentEvent,
    ReasoningMessageContent,
    StampedEvent,
    TextMessageContent,
    ToolCallArgs,
    ToolCallStart,
    decode_event,
    stamp,
)
from actors.chat._health import (
    ComponentHealth,
    HealthReason,
    HealthSample,
    HealthStatus,
    HealthThresholds,
    HealthWindow,
    LatencyHistogram,
)


class TestBridgeConfig:
    @pytest.mark.parametrize(
        ("field", "value", "error", "message"),
        [
            ("writer_queue_capacity", 0, ValueError, "BridgeConfig.writer_queue_capacity must be >= 1, got 0"),
            ("writer_queue_capacity", 2.5, TypeError, "BridgeConfig.writer_queue_capacity must be an int, got float"),
            ("replay_capacity", True, TypeError, "BridgeConfig.replay_capacity must be an int, got bool"),
            ("replay_max_age", 0, ValueError, "BridgeConfig.replay_max_age must be > 0, got 0"),
            ("slow_consumer_after", math.nan, ValueError, "BridgeConfig.slow_consumer_after must be > 0, got nan"),
            ("coalesce_at", 1, ValueError, "BridgeConfig.coalesce_at must be >= 2, got 1"),
            ("frame_kind", "json", ValueError, "BridgeConfig.frame_kind must be 'text' or 'bytes', got 'json'"),
            ("tick_interval", "fast", TypeError, "BridgeConfig.tick_interval must be a number of seconds, got str"),
            ("health_window", 0.05, ValueError, "BridgeConfig.health_window must be >= tick_interval (0.1), got 0.05"),
            ("authorize", "yes", TypeError, "BridgeConfig.authorize must be a plain"),
            ("monitor", "monitor", TypeError, "BridgeConfig.monitor must be an ActorRef or None, got str"),
            ("component_id", "", ValueError, "BridgeConfig.component_id must be a non-empty str"),
        ],
    )
    def test_config_bad_field_error_names_field_and_rule(
        self, field: str, value: Any, error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error) as info:
            BridgeConfig(**{field: value})
        assert str(info.value).startswith(message)

    def test_thresholds_unhealthy_below_degraded_rejected(self) -> None:
        with pytest.raises(ValueError, match=r"error_rate_unhealthy must be >= error_rate_degraded"):
            HealthThresholds(error_rate_degraded=0.5, error_rate_unhealthy=0.1)

    def test_config_defaults_valid_and_disabling_coalescing_allowed(self) -> None:
        assert BridgeConfig(coalesce_at=None, replay_max_age=math.inf).coalesce_at is None


def stamped(event: AgentEvent, seq: int, *, thread: str = "t", at: int = 0) -> StampedEvent:
    return stamp(event, thread_id=thread, run_id="r", seq=seq, observed_at=at, fan_out=1)


class TestCoalesce:
    def test_consecutive_deltas_of_one_message_merged_with_last_seq_and_first_seq(self) -> None:
        items = deque(stamped(TextMessageContent(message_id="m", delta=d), n, at=n) for n, d in enumerate("abc", 1))
        merged, folded = coalesce(items)
        assert folded == 2
        (only,) = merged
        assert isinstance(only.event, TextMessageContent)
        assert (only.event.delta, only.seq, only.observed_at) == ("abc", 3, 1)
        assert only.event.metadata == {"seq": 3, "threadId": "t", "runId": "r", "firstSeq": 1}
        assert decode_event(only.frame) == only.event

    def test_merging_a_merged_frame_keeps_the_first_seq(self) -> None:
        first, _ = coalesce(
            deque(stamped(TextMessageContent(message_id="m", delta=d), n) for n, d in [(1, "a"), (2, "b")])
        )
        again, folded = coalesce(deque([*first, stamped(TextMessageContent(message_id="m", delta="c"), 3)]))
        assert folded == 1
        assert again[0].event.metadata is not None
        assert again[0].event.metadata["firstSeq"] == 1
        assert isinstance(again[0].event, TextMessageContent)
        assert again[0].event.delta == "abc"

    def test_other_streams_threads_and_types_break_a_run(self) -> None:
        items = deque(
            [
                stamped(TextMessageContent(message_id="m", delta="a"), 1),
                stamped(TextMessageContent(message_id="m", delta="b"), 2, thread="other"),
                stamped(ReasoningMessageContent(message_id="m", delta="c"), 3),
                stamped(ToolCallArgs(tool_call_id="m", delta="d"), 4),
                stamped(ToolCallArgs(tool_call_id="m", delta="e"), 5),
                stamped(ToolCallStart(tool_call_id="x", tool_call_name="n"), 6),
                stamped(ToolCallStart(tool_call_id="x", tool_call_name="n"), 7),
            ]
        )
        merged, folded = coalesce(items)
        assert folded == 1  # only the two TOOL_CALL_ARGS of call "m"
        assert [item.seq for item in merged] == [1, 2, 3, 5, 6, 7]
        assert [item.event for item in merged][4:] == [item.event for item in items][5:]  # lifecycle untouched


class TestLatencyHistogram:
    def test_quantiles_exact_below_seven_ms(self) -> None:
        histogram = LatencyHistogram()
        for value in [0] * 50 + [1] * 40 + [3] * 9 + [6]:
            histogram.record(value)
        assert (histogram.quantile(0.5), histogram.quantile(0.9), histogram.quantile(0.99)) == (0.0, 1.0, 3.0)
        assert histogram.quantile(1.0) == 6.0

    def test_large_values_report_bucket_bound_capped_by_max(self) -> None:
        histogram = LatencyHistogram()
        for value in (12, 13, 14, 70_000):
            histogram.record(value)
        assert histogram.quantile(0.5) == 15.0  # the bound of bucket (10, 15]
        assert histogram.quantile(1.0) == 70_000.0  # the open last bucket reports the largest value seen
        top = LatencyHistogram()
        top.record(12)
        assert top.quantile(1.0) == 12.0  # no sample is above the largest one: the bound 15 is capped

    def test_merge_adds_counts_and_negative_clock_skew_counts_as_zero(self) -> None:
        a, b = LatencyHistogram(), LatencyHistogram()
        a.record(-3)
        b.record(500)
        a.merge(b)
        assert (a.count, a.quantile(0.0), a.quantile(1.0)) == (2, 0.0, 500.0)

    def test_empty_histogram_has_no_quantile_and_bad_q_rejected(self) -> None:
        assert LatencyHistogram().quantile(0.5) is None
        with pytest.raises(ValueError, match=r"q must be within \[0, 1\]"):
            LatencyHistogram().quantile(1.5)


class TestHealthWindow:
    def window(self, **thresholds: Any) -> HealthWindow:
        health = HealthWindow(HealthThresholds(**thresholds), window=10.0)
        health.record(HealthSample(at=0.0, capacity=100))
        return health

    def checks(self, health: ComponentHealth) -> dict[str, HealthStatus]:
        return {reason.check: reason.status for reason in health.reasons}

    def test_quiet_bridge_healthy(self) -> None:
        health = self.window().judge(HealthSample(at=1.0, capacity=100, connections=5), checked_at=7)
        assert (health.status, health.reasons, health.checked_at) == (HealthStatus.HEALTHY, (), 7)

    @pytest.mark.parametrize(
        ("errors", "attempts", "expected"),
        [(1, 1000, None), (2, 100, HealthStatus.DEGRADED), (10, 100, HealthStatus.UNHEALTHY)],
    )
    def test_error_rate_thresholds(self, errors: int, attempts: int, expected: HealthStatus | None) -> None:
        health = self.window().judge(HealthSample(at=1.0, attempts=attempts, errors=errors), checked_at=0)
        assert self.checks(health).get("delivery_errors") == expected

    def test_gauges_queue_lagging_connections_monitor(self) -> None:
        sample = HealthSample(
            at=1.0, capacity=100, fullest=85, queued=85, connections=11, lagging=1, monitor_problem="detached"
        )
        health = self.window(max_connections=10).judge(sample, checked_at=0)
        assert self.checks(health) == {
            "queue_depth": HealthStatus.DEGRADED,
            "lagging_connections": HealthStatus.DEGRADED,
            "connections": HealthStatus.DEGRADED,
            "monitor": HealthStatus.DEGRADED,
        }
        assert health.status is HealthStatus.DEGRADED

    def test_lagging_share_at_threshold_unhealthy(self) -> None:
        health = self.window().judge(HealthSample(at=1.0, connections=4, lagging=2), checked_at=0)
        assert self.checks(health) == {"lagging_connections": HealthStatus.UNHEALTHY}

    def test_counter_deltas_only_within_window(self) -> None:
        health = self.window()
        health.record(HealthSample(at=5.0, tap_lost=3, inbox_dropped=1))
        assert self.checks(health.judge(HealthSample(at=12.0, tap_lost=3, inbox_dropped=1), checked_at=0)) == {
            "tap_drops": HealthStatus.DEGRADED,
            "inbox_drops": HealthStatus.UNHEALTHY,
        }
        # Once the window has moved past t=5, the losses then are history.
        health.record(HealthSample(at=16.0, tap_lost=3, inbox_dropped=1))
        assert health.judge(HealthSample(at=16.0, tap_lost=3, inbox_dropped=1), checked_at=0).reasons == ()

    def test_stall_needs_a_full_window_with_queued_and_nothing_delivered(self) -> None:
        health = self.window()
        stalled = HealthSample(at=10.0, queued=5, delivered=0)
        assert self.checks(health.judge(stalled, checked_at=0)) == {"delivery_stalled": HealthStatus.UNHEALTHY}
        assert health.judge(HealthSample(at=9.9, queued=5), checked_at=0).reasons == ()
        assert health.judge(HealthSample(at=10.0, queued=5, delivered=1), checked_at=0).reasons == ()
        assert health.judge(HealthSample(at=10.0, queued=0), checked_at=0).reasons == ()

    def test_same_state_ignores_figures_compares_checks_and_levels(self) -> None:
        def health(*reasons: tuple[str, HealthStatus, str]) -> ComponentHealth:
            items = tuple(HealthReason(check=c, status=s, detail=d) for c, s, d in reasons)
            worst = max((s for _, s, _ in reasons), key=lambda s: s.rank, default=HealthStatus.HEALTHY)
            return ComponentHealth(status=worst, reasons=items)

        degraded = HealthStatus.DEGRADED
        assert health(("tap_drops", degraded, "3 lost")).same_state(health(("tap_drops", degraded, "9 lost")))
        assert not health(("tap_drops", degraded, "3")).same_state(health(("monitor", degraded, "3")))
        assert not health().same_state(None)
        assert health().same_state(health())
