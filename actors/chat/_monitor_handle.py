from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from actors import Actor, ActorError, ActorRef, ActorStopped, AskTimeout

from ._audit import AuditResult, AuditVerdict, cross_validate
from ._components import ComponentProxy, ComponentReport, ProbeComponent, live_proxy, read_component, reads_both
from ._monitor_messages import (
    AuditSummary,
    CheckHealth,
    GetAlerts,
    GetAuditSummary,
    JudgeReport,
    MonitorConfig,
    MonitorHealth,
    MonitorMessage,
    RecordEvent,
    RegisterComponent,
    RegisteredComponent,
    SetMonitoring,
    UnregisterComponent,
)

if TYPE_CHECKING:
    from ._anomaly import Anomaly
    from ._events import AgentEvent

# The seed's ChatEventMonitor API on top of the monitor actor's ref: what an application calls.

ProxyStarter = Callable[[str, Callable[[], Actor[Any]]], Awaitable[ActorRef[Any]]]
ProxyStopper = Callable[[str], Awaitable[None]]


class ChatEventMonitorHandle:
    """The seed's ChatEventMonitor API, on top of the monitor actor's ref.

    Method names are the production system's. Calls that read the monitor's state are asks, hence async (the
    seed's ``get_component_audit_summary()`` was sync; here it is awaited).

    :param proxy_starter: starts a component proxy actor (in the application tree: a dynamic child of the
        monitoring branch) and returns its ref
    """

    def __init__(
        self,
        ref: ActorRef[MonitorMessage],
        *,
        proxy_starter: ProxyStarter,
        proxy_stopper: ProxyStopper | None = None,
        config: MonitorConfig | None = None,
        flow_component_types: tuple[type, ...] = (),
    ) -> None:
        self.ref = ref
        self.config = config or MonitorConfig()
        self._proxy_starter = proxy_starter
        self._proxy_stopper = proxy_stopper
        self._proxies: dict[str, RegisteredComponent] = {}
        # Components registered with read_directly: audit_component() asks them itself (see there).
        self._read_directly: dict[str, Any] = {}
        self._flow_types = flow_component_types

    async def start_monitoring(self) -> None:
        """(Re)enable detection (the monitor starts enabled)."""
        self.ref.tell(SetMonitoring(enabled=True))

    async def stop_monitoring(self) -> None:
        """Pause alerting; events are still tracked, so resuming raises no false alarm.

        Anomalies found while paused are not reported, only counted (``check_health().suppressed_while_paused``).
        """
        self.ref.tell(SetMonitoring(enabled=False))

    def record_event(self, event: AgentEvent, *, thread_id: str, run_id: str, observed_at: int | None = None) -> None:
        """Report an event directly, not through the bridge. Never blocks; dropped (counted) if the monitor is full."""
        self.ref.tell(RecordEvent(thread_id=thread_id, run_id=run_id, event=event, observed_at=observed_at))

    async def check_health(self, *, timeout: float = 5.0) -> MonitorHealth:
        """The monitor's own health: backlog, tap drops, detections, component verdicts."""
        health: MonitorHealth = await self.ref.ask(CheckHealth(), timeout=timeout)
        return health

    async def register_component_for_monitoring(
        self, component_id: str, component: Any, *, observes_flow: bool | None = None, read_directly: bool = False
    ) -> None:
        """Wrap ``component`` in a proxy actor and audit it periodically and on demand.

        :param observes_flow: whether the monitor's tap comes from this component (cross-validate its claims
            against delivery); by default true for the bridge
        :param read_directly: the component's ``get_health_and_metrics(timeout=...)`` is an ask to an actor that
            keeps the timeout it is given (the bridge's handle): :meth:`audit_component` then asks it itself rather
            than through its proxy, one round trip fewer. The periodic audits still go through the proxy.
        :raises ValueError: when ``component_id`` is already registered
        :raises TypeError: when ``read_directly`` is set and the component has no ``get_health_and_metrics``
        """
        if not component_id or not isinstance(component_id, str):
            raise ValueError(f"component_id must be a non-empty str, got {component_id!r}")
        if component_id in self._proxies:
            raise ValueError(f"a component named {component_id!r} is already registered")
        missing = [
            name for name in ("get_health_status", "get_metrics") if not callable(getattr(component, name, None))
        ]
        if missing:
            raise TypeError(f"component {component_id!r} does not implement MonitorableComponent: missing {missing}")
        if read_directly and reads_both(component) is None:
            raise TypeError(
                f"component {component_id!r}: read_directly needs a get_health_and_metrics(*, timeout) method"
            )
        if observes_flow is None:
            observes_flow = isinstance(component, self._flow_types) if self._flow_types else False
        monitor = self.ref
        proxy = await self._proxy_starter(component_id, lambda: ComponentProxy(component_id, component, monitor))
        registered = RegisteredComponent(component_id=component_id, proxy=proxy, observes_flow=observes_flow)
        self._proxies[component_id] = registered
        if read_directly:
            self._read_directly[component_id] = component
        self.ref.tell(RegisterComponent(component=registered))

    async def unregister_component(self, component_id: str) -> None:
        """Stop auditing a component and stop its proxy."""
        if self._proxies.pop(component_id, None) is None:
            raise KeyError(component_id)
        self._read_directly.pop(component_id, None)
        self.ref.tell(UnregisterComponent(component_id=component_id))
        if self._proxy_stopper is not None:
            await self._proxy_stopper(component_id)

    async def audit_component(self, component_id: str) -> AuditResult:
        """Audit one component now: read its claim through its proxy (bounded by ``audit_timeout``), cross-validate.

        A component registered with ``read_directly`` (the bridge's handle) is asked here, with ``audit_timeout``
        as its own ask's timeout (a TimeoutError is unresponsive): its reads never block and may overlap the
        proxy's, so the hop through the proxy would only add a round trip (an audit of the bridge is then two: the
        bridge, and the monitor's judgement). Works while the monitor is detached too (without the flow check): an
        audit never fails because of it.
        """
        registered = self._proxies.get(component_id)
        if registered is None:
            raise KeyError(f"no component registered as {component_id!r}")
        report: ComponentReport | None = None
        unresponsive = False
        component = self._read_directly.get(component_id)
        if component is not None:
            # Bounded by the component itself (an ask's timeout): a cancel scope of our own cost ~9 µs an audit.
            try:
                report = await read_component(component_id, component, 0, timeout=self.config.audit_timeout)
            except TimeoutError:
                unresponsive = True
        else:
            proxy = live_proxy(registered.proxy, self.ref._system)
            if proxy is not registered.proxy:  # the branch was re-attached: its proxies were started anew
                self._proxies[component_id] = registered = msgspec.structs.replace(registered, proxy=proxy)
            try:
                reply = await proxy.ask(
                    ProbeComponent(reply_to=_NOWHERE, audit_id=0), timeout=self.config.audit_timeout
                )
                report = reply if isinstance(reply, ComponentReport) else None
            except (AskTimeout, ActorError):
                unresponsive = True
        try:
            result: AuditResult = await self.ref.ask(
                JudgeReport(report=report, component_id=component_id, unresponsive=unresponsive),
                timeout=self.config.audit_timeout,
            )
        except (ActorStopped, AskTimeout):
            if report is None:
                return AuditResult(
                    component_id=component_id,
                    audit_id=0,
                    at=self._now_ms(),
                    claimed="unknown",
                    verdict=AuditVerdict.UNRESPONSIVE,
                    findings=("its proxy did not answer and the monitor is unavailable",),
                )
            return cross_validate(report, flow=None, policy=self.config.audit, at=self._now_ms())
        return result

    def _now_ms(self) -> int:
        # The handle runs outside any actor: it reads the runtime clock through the monitor's system.
        return self.ref._system.clock.now_ms()

    async def audit_bridge_health(self, component_id: str = "agent_websocket_bridge") -> AuditResult:
        """The seed's name for auditing the bridge."""
        return await self.audit_component(component_id)

    async def get_component_audit_summary(self, *, timeout: float = 5.0) -> AuditSummary:
        """Every registered component's last audit."""
        summary: AuditSummary = await self.ref.ask(GetAuditSummary(), timeout=timeout)
        return summary

    async def get_alerts(self, *, timeout: float = 5.0) -> list[Anomaly]:
        """The most recent anomalies (bounded history), oldest first."""
        alerts: list[Anomaly] = await self.ref.ask(GetAlerts(), timeout=timeout)
        return alerts


class _Nowhere:
    """A reply_to for on-demand probes: the proxy's ask reply carries the report, nothing else needs it."""

    def tell(self, message: object) -> None:
        return None


_NOWHERE: Any = _Nowhere()
