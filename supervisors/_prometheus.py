from __future__ import annotations

from typing import TYPE_CHECKING, Final

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from actors import ActorError
from actors.chat._bridge_messages import BridgeMetrics
from actors.chat._monitor import AuditSummary, MonitorHealth

from ._asgi_ws import GatewayStatistics

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from prometheus_client.metrics_core import Metric

    from ._asgi_ws import WebSocketGateway
    from .app import Runtime

PREFIX: Final = "agentwatch"
STATUSES: Final = ("healthy", "degraded", "unhealthy")
MONITORING_STATES: Final = ("running", "restarting", "detached", "stopped")


class RuntimeSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Everything ``/metrics`` exports, read from the running actors at one scrape.

    A part that could not be read (the monitor while detached, a timed-out ask) is ``None`` and its metrics are
    absent from that scrape rather than reported as zero.
    """

    bridge: BridgeMetrics | None
    bridge_status: str | None
    monitoring: str
    monitor: MonitorHealth | None
    audit: AuditSummary | None
    supervisor_events: dict[str, int]
    dead_letters: dict[str, int]
    gateway: GatewayStatistics | None


async def read_snapshot(runtime: Runtime, gateway: WebSocketGateway | None = None) -> RuntimeSnapshot:
    """Ask the bridge and (when it runs) the monitor for their figures; never raises for an unavailable actor."""
    bridge: BridgeMetrics | None = None
    bridge_status: str | None = None
    try:
        bridge = await runtime.bridge.get_metrics()
        bridge_status = (await runtime.bridge.get_health_status()).status.value
    except (ActorError, TimeoutError):
        pass
    monitoring = runtime.monitoring_state()
    monitor: MonitorHealth | None = None
    audit: AuditSummary | None = None
    if monitoring == "running":
        try:
            monitor = await runtime.monitor.check_health(timeout=1.0)
            audit = await runtime.monitor.get_component_audit_summary(timeout=1.0)
        except (ActorError, TimeoutError):
            pass
    return RuntimeSnapshot(
        bridge=bridge,
        bridge_status=bridge_status,
        monitoring=monitoring,
        monitor=monitor,
        audit=audit,
        supervisor_events={kind.value: count for kind, count in runtime.events.counts.items()},
        dead_letters=runtime.system.dead_letters.statistics().by_reason,
        gateway=gateway.statistics() if gateway is not None else None,
    )


def _name(name: str) -> str:
    return f"{PREFIX}_{name}"


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    # prometheus_client appends the `_total` suffix to counters itself.
    return CounterMetricFamily(_name(name), documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(_name(name), documentation, value=value)


def _labelled_counter(name: str, documentation: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(_name(name), documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def _state(name: str, documentation: str, label: str, states: Iterable[str], current: str) -> GaugeMetricFamily:
    # One series per state, 1 for the current one: alert rules read `agentwatch_monitoring_state{state="detached"}`.
    family = GaugeMetricFamily(_name(name), documentation, labels=[label])
    for state in states:
        family.add_metric([state], 1.0 if state == current else 0.0)
    return family


def _bridge_families(bridge: BridgeMetrics) -> Iterator[Metric]:
    counters = (
        ("bridge_events_received", "Events handed to the bridge (valid or not).", bridge.events_received),
        ("bridge_events_accepted", "Events numbered and kept for replay.", bridge.events_accepted),
        ("bridge_events_routed", "Accepted events with at least one subscribed connection.", bridge.events_routed),
        ("bridge_events_unrouted", "Accepted events no connection was subscribed to.", bridge.events_unrouted),
        ("bridge_fan_out", "(event, connection) pairs routed at acceptance.", bridge.fan_out_total),
        ("bridge_events_deferred", "Routed pairs held back in the replay ring for a lagging connection.",
         bridge.events_deferred),
        ("bridge_events_caught_up", "Deferred pairs later handed to their connection.", bridge.events_caught_up),
        ("bridge_events_replayed", "Events sent again to clients resuming with afterSeq.", bridge.events_replayed),
        ("bridge_events_delivered", "Events sent to a client in a frame.", bridge.events_delivered),
        ("bridge_events_coalesced", "Delta events merged into a later frame under backlog.", bridge.events_coalesced),
        ("bridge_connections_opened", "Connections registered with the bridge.", bridge.connections_opened),
        ("bridge_subscriptions_refused", "Subscribes refused by the authorisation hook.",
         bridge.subscriptions_refused),
        ("bridge_resumes", "Subscribes with afterSeq.", bridge.resumes),
        ("bridge_resume_gaps", "Resumes closed with 4002 (afterSeq no longer in the ring).", bridge.resume_gaps),
        ("bridge_slow_consumer_closes", "Connections closed with 4001.", bridge.slow_consumer_closes),
        ("bridge_send_errors", "Sends to a client that failed.", bridge.send_errors),
        ("bridge_replay_evicted_events", "Events evicted from the replay rings.", bridge.replay_evicted),
        ("bridge_monitor_taps", "Events tapped to the monitor.", bridge.taps),
    )  # fmt: skip
    for name, documentation, value in counters:
        yield _counter(name, documentation, value)
    yield _labelled_counter(
        "bridge_events_dropped", "Events lost to the bridge's accounting, by reason.", "reason", bridge.dropped
    )
    closed = {str(code): count for code, count in bridge.connections_closed.items()}
    yield _labelled_counter("bridge_connections_closed", "Connections closed, by WebSocket close code.", "code", closed)
    gauges = (
        ("bridge_connections_open", "Connections open now.", bridge.connections_open),
        ("bridge_connections_lagging", "Connections whose queue is full now.", bridge.connections_lagging),
        ("bridge_subscriptions", "(connection, thread) subscriptions now.", bridge.subscriptions),
        ("bridge_queued_events", "Events handed to writers and not yet sent.", bridge.queued),
        ("bridge_max_queue_depth_events", "The deepest connection queue now.", bridge.max_queue_depth),
        ("bridge_deferred_pending_events", "Deferred pairs not yet handed over.", bridge.deferred_pending),
        ("bridge_threads", "Threads the bridge keeps a replay ring for.", bridge.threads),
        ("bridge_replay_retained_events", "Events held in the replay rings.", bridge.replay_retained),
        ("bridge_monitor_attached", "1 while the monitor is attached to the tap.", int(bridge.monitor_attached)),
    )  # fmt: skip
    for name, documentation, value in gauges:
        yield _gauge(name, documentation, value)
    latency = GaugeMetricFamily(
        _name("bridge_delivery_latency_seconds"),
        "Delivery latency (acceptance to completed send) over every frame since start, by quantile.",
        labels=["quantile"],
    )
    for quantile, value_ms in (("0.5", bridge.latency_p50_ms), ("0.99", bridge.latency_p99_ms)):
        if value_ms is not None:
            latency.add_metric([quantile], value_ms / 1000.0)
    yield latency


def _monitor_families(monitor: MonitorHealth) -> Iterator[Metric]:
    yield _counter("monitor_events_observed", "Events the monitor observed.", monitor.events_observed)
    yield _counter("monitor_tap_drops", "Taps the monitor's mailbox dropped.", monitor.tap_drops)
    yield _counter("monitor_starts", "Monitor instances started (1 + restarts).", monitor.instance)
    yield _gauge("monitor_runs_in_flight", "Runs started and not finished.", monitor.runs_in_flight)
    yield _gauge("monitor_backlog_messages", "Messages waiting in the monitor's mailbox.", monitor.backlog)
    yield _labelled_counter(
        "monitor_anomalies", "Anomalies reported, by kind.", "kind", dict(monitor.anomalies_by_kind.items())
    )


def metric_families(snapshot: RuntimeSnapshot) -> Iterator[Metric]:
    """Every metric of one snapshot (the names are listed in docs/embedding.md); no label carries a thread id."""
    if snapshot.bridge is not None:
        yield from _bridge_families(snapshot.bridge)
    if snapshot.bridge_status is not None:
        yield _state("bridge_status", "The bridge's health, one series per status.", "status", STATUSES,
                     snapshot.bridge_status)  # fmt: skip
    yield _state(
        "monitoring_state",
        "Where the monitoring branch is (detached: the bridge runs alone).",
        "state",
        MONITORING_STATES,
        snapshot.monitoring,
    )
    if snapshot.monitor is not None:
        yield from _monitor_families(snapshot.monitor)
    if snapshot.audit is not None:
        audit = snapshot.audit
        yield _gauge("components_registered", "Components under audit.", audit.total_components)
        yield _gauge("components_mismatched", "Components whose health claim the audit contradicts.",
                     len(audit.mismatched))  # fmt: skip
        yield _gauge("components_unresponsive", "Components that did not answer their audit.", len(audit.unresponsive))
    yield _labelled_counter(
        "supervisor_events",
        "Supervision events (restarts, detaches, ...), by kind.",
        "kind",
        snapshot.supervisor_events,
    )
    yield _labelled_counter(
        "dead_letters", "Messages no actor will handle, by reason.", "reason", snapshot.dead_letters
    )
    gateway = snapshot.gateway
    if gateway is not None:
        yield _counter("ws_connections_accepted", "WebSocket connections accepted on /ws.", gateway.accepted)
        yield _counter(
            "ws_auth_refused", "Connections closed with 1008: token missing or refused.", gateway.auth_refused
        )
        yield _counter("ws_threads_refused", "Subscribes refused by the token's grant.", gateway.threads_refused)
        yield _counter("ws_bad_frames", "Client frames answered with an error frame.", gateway.bad_frames)
        yield _counter("ws_bad_frame_closes", "Connections closed with 4003.", gateway.bad_frame_closes)
        yield _gauge("ws_connections_open", "WebSocket connections open on /ws.", gateway.open)


class RuntimeCollector(Collector):
    """A prometheus_client collector over the latest :class:`RuntimeSnapshot`.

    Actors are read with asks, which a synchronous ``collect()`` cannot await: the ``/metrics`` endpoint reads a
    fresh snapshot, hands it to :meth:`update`, then renders. Registered in another registry, the collector
    exports the snapshot of the last scrape of ``/metrics`` (or of the last :meth:`update`).
    """

    def __init__(self) -> None:
        self._snapshot: RuntimeSnapshot | None = None

    def update(self, snapshot: RuntimeSnapshot) -> None:
        """Export ``snapshot`` from now on."""
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Every metric of the current snapshot (nothing before the first)."""
        if self._snapshot is not None:
            yield from metric_families(self._snapshot)


def runtime_registry(collector: RuntimeCollector) -> CollectorRegistry:
    """A registry holding only ``collector`` (the process-wide default registry is left alone)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
