"""The application tree: the bridge on the critical path, the monitoring branch beside it.

::

    agentwatch (one_for_one)                 root
    ├── bridge                               critical, permanent
    └── monitoring (one_for_one)             critical=False: detached on exhaustion, re-attached after a cool-down
        ├── alerts                           the AlertDispatcher (sinks that may hang or raise)
        ├── monitor                          the ChatEventMonitor, fed by the bridge's tap
        └── components (one_for_one)         one ComponentProxy per registered component
"""

from __future__ import annotations

import contextlib
import logging
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import msgspec

from actors import (
    Actor,
    ActorError,
    ActorNotFound,
    ActorRef,
    ActorStopped,
    ActorSystem,
    MailboxSpec,
    open_actor_system,
)
from actors.chat._alert_sinks import AlertDispatcher, AlertSink
from actors.chat._bridge import AgentWebSocketBridge, BridgeWiring
from actors.chat._bridge_handle import BridgeHandle
from actors.chat._bridge_messages import AttachMonitor, BridgeConfig, allow_all
from actors.chat._health import ComponentHealth
from actors.chat._monitor import (
    AuditSummary,
    ChatEventMonitor,
    ChatEventMonitorHandle,
    MonitorHealth,
    MonitorMemory,
)

from ._config import RuntimeConfig
from ._process_monitor import process_monitor_specs
from ._spec import ChildSpec, Restart, Shutdown, Strategy
from ._supervisor import Supervisor
from ._supervisor_messages import ChildState, SupervisorHealth
from ._supervisor_ref import SupervisorRef, start_supervisor

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from ._events import SupervisionEventStream

logger = logging.getLogger("agentwatch.app")

ROOT = "agentwatch"
BRIDGE = f"{ROOT}/bridge"
MONITORING = f"{ROOT}/monitoring"
MONITOR = f"{MONITORING}/monitor"
ALERTS = f"{MONITORING}/alerts"
COMPONENTS = f"{MONITORING}/components"
BRIDGE_COMPONENT_ID = "agent_websocket_bridge"


class RuntimeHealth(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One combined health report: what ``/health`` serves.

    ``ready`` depends on the bridge alone: a detached monitor makes the runtime ``degraded``, never not-ready.
    """

    status: str
    ready: bool
    reasons: tuple[str, ...]
    bridge: ComponentHealth | None
    monitoring: str
    monitor: MonitorHealth | None
    audit: AuditSummary | None
    supervision: SupervisorHealth | None


class Runtime:
    """Handles to a running application tree (what :func:`open_runtime` yields)."""

    def __init__(
        self,
        system: ActorSystem,
        config: RuntimeConfig,
        supervisor: SupervisorRef,
        bridge: BridgeHandle,
        monitor: ChatEventMonitorHandle,
        memory: MonitorMemory,
    ) -> None:
        self.system = system
        self.config = config
        self.supervisor = supervisor
        self.bridge = bridge
        self.monitor = monitor
        self.memory = memory

    @property
    def events(self) -> SupervisionEventStream:
        """Every supervision event of the tree (restarts, detaches, re-attaches, escalations)."""
        return self.supervisor.events

    def monitoring_state(self) -> str:
        """``running``, ``restarting``, ``detached`` or ``stopped``: where the monitoring branch is."""
        try:
            ref = self.system.lookup(MONITORING)
        except ActorNotFound:
            return ChildState.STOPPED.value
        return {"running": "running", "detached": "detached", "stopped": "stopped"}.get(ref.state, "restarting")

    def monitor_ref(self) -> ActorRef[Any] | None:
        """The monitor's current ref, or None while the monitoring branch is down."""
        try:
            ref = self.system.lookup(MONITOR)
        except ActorNotFound:
            return None
        return ref if ref.is_alive else None

    async def health(self, *, timeout: float = 2.0) -> RuntimeHealth:
        """Combine the bridge's, the monitor's and the root supervisor's health into one report."""
        reasons: list[str] = []
        bridge: ComponentHealth | None = None
        try:
            bridge = await self.bridge.get_health_status()
        except (ActorError, TimeoutError) as exc:
            reasons.append(f"bridge unavailable: {exc}")
        monitoring = self.monitoring_state()
        monitor: MonitorHealth | None = None
        audit: AuditSummary | None = None
        if monitoring == "running":
            try:
                monitor = await self.monitor.check_health(timeout=timeout)
                audit = await self.monitor.get_component_audit_summary(timeout=timeout)
            except (ActorError, TimeoutError) as exc:
                reasons.append(f"monitor unavailable: {exc}")
        else:
            reasons.append(f"monitoring is {monitoring}: the bridge runs alone")
        supervision: SupervisorHealth | None = None
        try:
            supervision = await self.supervisor.health(timeout=timeout)
        except (ActorError, TimeoutError) as exc:
            reasons.append(f"root supervisor unavailable: {exc}")
        ready = bridge is not None and self.bridge.ref.is_alive
        if bridge is not None and bridge.status.value != "healthy":
            reasons.extend(f"bridge {reason.check}: {reason.detail}" for reason in bridge.reasons)
        if monitor is not None and monitor.status != "healthy":
            reasons.extend(f"monitor: {reason}" for reason in monitor.reasons)
        if audit is not None and audit.mismatched:
            reasons.append(f"health claim mismatch: {', '.join(audit.mismatched)}")
        if not ready or (bridge is not None and bridge.status.value in ("unhealthy", "critical")):
            status = "unhealthy"
        elif reasons:
            status = "degraded"
        else:
            status = "healthy"
        return RuntimeHealth(
            status=status,
            ready=ready,
            reasons=tuple(reasons),
            bridge=bridge,
            monitoring=monitoring,
            monitor=monitor,
            audit=audit,
            supervision=supervision,
        )


class _AttachingMonitor(ChatEventMonitor):
    """The application's monitor: on every (re)start it attaches itself to the bridge's tap."""

    async def on_start(self) -> None:
        # Attached first: the bridge handles the attach before the rebuild's ReplaySnapshot, and answers that by
        # reporting every thread's deliveries to this instance at once, so the report is queued ahead of the tick
        # on which the rebuilt state's delivery deadlines are judged. Taps arriving meanwhile queue in the
        # mailbox, and those the snapshot already holds are skipped.
        if self.bridge is not None:
            self.bridge.tell(AttachMonitor(monitor=self.ref))
        await super().on_start()


def _monitoring_branch(
    system: ActorSystem,
    config: RuntimeConfig,
    memory: MonitorMemory,
    sinks: Sequence[AlertSink],
    proxies: dict[str, Callable[[], Actor[Any]]],
) -> Callable[[], Supervisor]:
    supervision = config.supervision

    def alerts() -> AlertDispatcher:
        return AlertDispatcher(sinks, sink_timeout=supervision.sink_timeout)

    def monitor() -> ChatEventMonitor:
        bridge = system.lookup(BRIDGE)
        try:
            dispatcher: ActorRef[Any] | None = system.lookup(ALERTS)
        except ActorNotFound:
            dispatcher = None
        return _AttachingMonitor(config.monitor, memory=memory, bridge=bridge, sinks=sinks, dispatcher=dispatcher)

    def components() -> Supervisor:
        # Built from the registry at every (re)start: components registered before a restart come back with it.
        return Supervisor(
            strategy=Strategy.ONE_FOR_ONE,
            intensity=100,
            period=10.0,
            children=[_proxy_spec(cid, factory, config) for cid, factory in proxies.items()],
        )

    def branch() -> Supervisor:
        monitor_mailbox = config.monitor_mailbox_spec
        if config.monitor_isolation == "process":
            # The monitor in a worker process, and beside it the keeper of its memory (which a kill must not lose).
            watching = process_monitor_specs(
                config.monitor,
                memory,
                bridge=BRIDGE,
                alerts=ALERTS,
                branch=MONITORING,
                mailbox=monitor_mailbox,
                handler_timeout=supervision.monitor_handler_timeout,
                isolation=config.monitor_process,
            )
        else:
            watching = [
                ChildSpec(
                    "monitor",
                    monitor,
                    mailbox=monitor_mailbox,
                    handler_timeout=supervision.monitor_handler_timeout,
                    shutdown=2.0,
                )
            ]
        return Supervisor(
            strategy=Strategy.ONE_FOR_ONE,
            intensity=supervision.monitor_intensity,
            period=supervision.monitor_period,
            children=[
                ChildSpec("alerts", alerts, mailbox=MailboxSpec(capacity=10_000), shutdown=1.0),
                *watching,
                ChildSpec("components", components, shutdown=Shutdown.INFINITY),
            ],
        )

    return branch


def _proxy_spec(component_id: str, factory: Callable[[], Actor[Any]], config: RuntimeConfig) -> ChildSpec:
    # A hung component must time out its own audit, never block anything else: its proxy's handler has a
    # deadline (a little over the audit timeout), and the proxy is non-critical with its own budget.
    return ChildSpec(
        component_id,
        factory,
        restart=Restart.PERMANENT,
        critical=False,
        handler_timeout=config.monitor.audit_timeout * 1.5,
        detach_cooldown=config.supervision.detach_cooldown,
        max_detach_cooldown=config.supervision.max_detach_cooldown,
        shutdown=1.0,
    )


@asynccontextmanager
async def open_runtime(
    config: RuntimeConfig | None = None,
    *,
    system: ActorSystem | None = None,
    authorize: Callable[[str, str], bool] = allow_all,
    sinks: Sequence[AlertSink] = (),
    epoch_ms: int | None = None,
    register_bridge: bool = True,
) -> AsyncIterator[Runtime]:
    """Start the application tree; on exit stop it (the bridge flushes and closes its connections with 1001).

    If the monitoring branch cannot start, the runtime starts with the bridge alone and reports monitoring as
    degraded (it is retried after its cool-down); the reverse never happens.

    :param system: run inside an existing actor system (by default a new one is opened and closed)
    :param authorize: ``(principal, thread_id) -> bool`` for every subscribe
    :param sinks: alert sinks (sync or async callables taking an Anomaly)
    :param epoch_ms: pin the runtime clock's wall-clock anchor (reproducible simulations)
    :param register_bridge: register the bridge with the monitor for audits (as the seed's startup did)
    """
    config = config if config is not None else RuntimeConfig()
    async with AsyncExitStack() as stack:
        if system is None:
            system = await stack.enter_async_context(open_actor_system(epoch_ms=epoch_ms))
        settings = config.bridge
        bridge_config = BridgeConfig(
            replay_capacity=settings.replay_capacity,
            replay_max_age=settings.replay_max_age,
            writer_queue_capacity=settings.writer_queue_capacity,
            slow_consumer_after=settings.slow_consumer_after,
            coalesce_at=settings.coalesce_at,
            tick_interval=settings.tick_interval,
            health_window=settings.health_window,
            frame_kind=settings.frame_kind,
            thresholds=settings.thresholds,
            tap_shed_at=settings.tap_shed_at,
            authorize=authorize,
        )
        wiring = BridgeWiring()
        memory = MonitorMemory(config.monitor)
        proxies: dict[str, Callable[[], Actor[Any]]] = {}
        supervision = config.supervision
        supervisor = await start_supervisor(
            system,
            name=ROOT,
            strategy=Strategy.ONE_FOR_ONE,
            intensity=supervision.root_intensity,
            period=supervision.root_period,
            children=[
                ChildSpec(
                    "bridge",
                    lambda: AgentWebSocketBridge(bridge_config, wiring),
                    mailbox=MailboxSpec(capacity=settings.mailbox_capacity),
                    shutdown=5.0,
                ),
                ChildSpec(
                    "monitoring",
                    _monitoring_branch(system, config, memory, sinks, proxies),
                    critical=False,
                    intensity=supervision.monitoring_intensity,
                    period=supervision.monitoring_period,
                    detach_cooldown=supervision.detach_cooldown,
                    max_detach_cooldown=supervision.max_detach_cooldown,
                    shutdown=Shutdown.INFINITY,
                ),
            ],
        )
        bridge = BridgeHandle(system.lookup(BRIDGE), system, bridge_config)

        async def start_proxy(component_id: str, factory: Callable[[], Actor[Any]]) -> ActorRef[Any]:
            proxies[component_id] = factory
            components = SupervisorRef(system.lookup(COMPONENTS), supervisor.events)
            return await components.start_child(_proxy_spec(component_id, factory, config))

        async def stop_proxy(component_id: str) -> None:
            proxies.pop(component_id, None)
            try:
                components = SupervisorRef(system.lookup(COMPONENTS), supervisor.events)
            except ActorNotFound:
                return
            await components.terminate_child(component_id)
            await components.delete_child(component_id)

        monitor = ChatEventMonitorHandle(
            _LiveMonitorRef(system),  # type: ignore[arg-type]
            proxy_starter=start_proxy,
            proxy_stopper=stop_proxy,
            config=config.monitor,
            flow_component_types=(BridgeHandle,),
        )
        runtime = Runtime(system, config, supervisor, bridge, monitor, memory)
        if register_bridge and runtime.monitoring_state() == "running":
            try:
                # Its reads are asks to the bridge's actor, with the timeout given: audits on demand skip the proxy.
                await monitor.register_component_for_monitoring(BRIDGE_COMPONENT_ID, bridge, read_directly=True)
            except (ActorError, TimeoutError) as exc:
                logger.warning("could not register the bridge for audits: %s", exc)
        try:
            yield runtime
        finally:
            await supervisor.stop(timeout=None)
            # Connection writers and health-observer proxies are spawned outside the tree, under the bridge's name:
            # stop whatever is left of them, so a runtime inside a longer-lived actor system leaves nothing behind.
            for name in system.names():
                if name.startswith(f"{BRIDGE}/"):
                    with contextlib.suppress(ActorNotFound):
                        await system.lookup(name).stop(timeout=1.0)


class _LiveMonitorRef:
    """Stands in for the monitor's ActorRef in the handle: resolves the current monitor by name at every call.

    The monitor's ref is stable across monitor restarts, but a restart of the whole monitoring branch makes a new
    one; the handle must follow it, and a detached branch must read as "stopped", not crash the caller.
    """

    def __init__(self, system: ActorSystem) -> None:
        self._system = system

    def _current(self) -> ActorRef[Any]:
        return self._system.lookup(MONITOR)

    @property
    def name(self) -> str:
        return MONITOR

    @property
    def is_alive(self) -> bool:
        try:
            return self._current().is_alive
        except ActorNotFound:
            return False

    def tell(self, message: Any) -> None:
        try:
            self._current().tell(message)
        except ActorNotFound:
            self._system.dead_letters.record(MONITOR, "stopped", message)

    async def ask(self, message: Any, *, timeout: float | None = 5.0) -> Any:
        try:
            ref = self._current()
        except ActorNotFound:
            raise ActorStopped(MONITOR, "stopped") from None
        return await ref.ask(message, timeout=timeout)
