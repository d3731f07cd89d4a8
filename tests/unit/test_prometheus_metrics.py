from __future__ import annotations

from typing import Any

import msgspec
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from actors.chat._bridge_messages import BridgeMetrics
from actors.chat._detection import TrackerStatistics
from actors.chat._monitor import MonitorHealth
from supervisors._asgi_ws import GatewayStatistics
from supervisors._prometheus import RuntimeCollector, RuntimeSnapshot, runtime_registry


def bridge_metrics(**overrides: Any) -> BridgeMetrics:
    fields: dict[str, Any] = {}
    for field in msgspec.structs.fields(BridgeMetrics):
        fields[field.name] = {"dropped": {}, "connections_closed": {}, "monitor_attached": True}.get(field.name, 0)
    fields.update(latency_p50_ms=2.0, latency_p99_ms=40.0)
    fields.update(overrides)
    return BridgeMetrics(**fields)


def monitor_health() -> MonitorHealth:
    tracker = TrackerStatistics(
        runs_in_flight=3,
        runs_retained=0,
        runs_abandoned=0,
        evictions=0,
        pending_deadlines=0,
        pending_deliveries=0,
        events_observed=10,
        anomalies_by_kind={},
    )
    return MonitorHealth(
        status="healthy",
        reasons=(),
        monitoring=True,
        backlog=0,
        tap_drops=4,
        events_observed=10,
        runs_in_flight=3,
        anomalies_by_kind={"stuck_tool": 2},
        components={},
        instance=2,
        tracker=tracker,
    )


def snapshot(**overrides: Any) -> RuntimeSnapshot:
    fields: dict[str, Any] = {
        "bridge": bridge_metrics(events_accepted=7, dropped={"inbox_full": 3}, connections_closed={"1000": 2}),
        "bridge_status": "degraded",
        "monitoring": "running",
        "monitor": monitor_health(),
        "audit": None,
        "supervisor_events": {"restarted": 5, "detached": 1},
        "dead_letters": {"stopped": 9},
        "gateway": GatewayStatistics(
            accepted=4, auth_refused=1, threads_refused=0, bad_frames=2, bad_frame_closes=0, open=3
        ),
    }
    fields.update(overrides)
    return RuntimeSnapshot(**fields)


def scrape(snap: RuntimeSnapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    collector = RuntimeCollector()
    collector.update(snap)
    text = generate_latest(runtime_registry(collector)).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class TestMetricFamilies:
    def test_counters_end_in_total_and_every_name_has_the_prefix(self) -> None:
        samples = scrape(snapshot())
        assert samples[("agentwatch_bridge_events_accepted_total", ())] == 7
        assert samples[("agentwatch_bridge_events_dropped_total", (("reason", "inbox_full"),))] == 3
        assert samples[("agentwatch_bridge_connections_closed_total", (("code", "1000"),))] == 2
        assert samples[("agentwatch_monitor_anomalies_total", (("kind", "stuck_tool"),))] == 2
        assert samples[("agentwatch_supervisor_events_total", (("kind", "restarted"),))] == 5
        assert samples[("agentwatch_dead_letters_total", (("reason", "stopped"),))] == 9
        assert samples[("agentwatch_ws_bad_frames_total", ())] == 2
        assert all(name.startswith("agentwatch_") for name, _ in samples)

    def test_latency_is_exported_in_seconds_by_quantile(self) -> None:
        samples = scrape(snapshot())
        assert samples[("agentwatch_bridge_delivery_latency_seconds", (("quantile", "0.5"),))] == 0.002
        assert samples[("agentwatch_bridge_delivery_latency_seconds", (("quantile", "0.99"),))] == 0.04

    def test_latency_before_any_delivery_is_absent_not_zero(self) -> None:
        samples = scrape(snapshot(bridge=bridge_metrics(latency_p50_ms=None, latency_p99_ms=None)))
        assert not [key for key in samples if key[0] == "agentwatch_bridge_delivery_latency_seconds"]

    def test_states_are_one_series_per_state_with_the_current_one_at_1(self) -> None:
        samples = scrape(snapshot(monitoring="detached", monitor=None))
        states = {labels[0][1]: v for (name, labels), v in samples.items() if name == "agentwatch_monitoring_state"}
        assert states == {"running": 0, "restarting": 0, "detached": 1, "stopped": 0}
        assert samples[("agentwatch_bridge_status", (("status", "degraded"),))] == 1
        assert samples[("agentwatch_bridge_status", (("status", "healthy"),))] == 0

    def test_a_detached_monitor_exports_no_monitor_figures_rather_than_zeros(self) -> None:
        samples = scrape(snapshot(monitoring="detached", monitor=None))
        assert not [key for key in samples if key[0].startswith("agentwatch_monitor_")]

    def test_nothing_is_exported_before_the_first_update(self) -> None:
        assert generate_latest(runtime_registry(RuntimeCollector())) == b""
