from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec

# ActorRef at run time: msgspec resolves ProbeComponent's annotations in this module when it decodes one (the
# process-isolated monitor receives ProbeComponent over its pipe).
from actors import Actor, ActorNotFound, ActorRef, Message

if TYPE_CHECKING:
    from actors import ActorSystem

logger = logging.getLogger("agentwatch.components")

#: The statuses a component may claim, best first. Anything else is read as "unknown".
HEALTH_STATUSES = ("healthy", "degraded", "unhealthy", "critical")


@runtime_checkable
class MonitorableComponent(Protocol):
    """What a component registered with the monitor implements (the seed's interface, unchanged).

    A component may also offer ``get_health_and_metrics()``, returning ``(health, metrics)`` as of one moment: its
    proxy then reads both with that one call. One registered with ``read_directly`` (the bridge's handle, whose
    reads are asks to the bridge's actor) must accept ``timeout=`` and keep it: an audit asked for by the
    application (``audit_component``) then asks it itself, without the hop through its proxy.
    """

    async def get_health_status(self) -> Any:
        """Return the component's own view of its health: a mapping or object with a ``status`` field."""
        ...

    async def get_metrics(self) -> Any:
        """Return the component's counters: a mapping (or msgspec Struct) of names to numbers."""
        ...

    def register_monitor_observer(self, observer: ComponentMonitor) -> None:
        """Remember ``observer`` and call its ``on_component_health_change`` whenever the health changes."""
        ...


@runtime_checkable
class ComponentMonitor(Protocol):
    """What a component's observer implements (the seed's interface): health changes are pushed to it."""

    def on_component_health_change(self, component_id: str, health: Any) -> None:
        """Called by a component when its health changes; must not block."""
        ...


def health_status(health: Any) -> str:
    """Read the ``status`` out of whatever a component returned (mapping, struct or plain string)."""
    status: Any
    if isinstance(health, str):
        status = health
    elif isinstance(health, Mapping):
        status = health.get("status")
    else:
        status = getattr(health, "status", None)
    status = getattr(status, "value", status)  # an enum member
    return status if isinstance(status, str) and status in HEALTH_STATUSES else "unknown"


def as_plain(value: Any) -> dict[str, Any]:
    """Turn a component's health or metrics (mapping, msgspec Struct, dataclass, ...) into a plain dict."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, msgspec.Struct):
        plain = msgspec.to_builtins(value)
        return plain if isinstance(plain, dict) else {"value": plain}
    if isinstance(value, str):
        return {"status": value}
    try:
        plain = msgspec.to_builtins(value)
    except TypeError:
        return {"value": repr(value)}
    return plain if isinstance(plain, dict) else {"value": plain}


class ProbeComponent(Message, frozen=True, kw_only=True):
    """Ask a component proxy to read its component's health and metrics and tell the result to ``reply_to``."""

    reply_to: ActorRef[Any]
    audit_id: int


class ComponentReport(Message, frozen=True, kw_only=True):
    """A component's claimed health and metrics, as read by its proxy (``error`` set when reading failed)."""

    component_id: str
    audit_id: int
    status: str
    health: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None = None


class ComponentHealthChanged(Message, frozen=True, kw_only=True):
    """Pushed by a component (through its observer) when its health changes."""

    component_id: str
    status: str
    health: dict[str, Any]


class _ObserverForwarder:
    """The ``ComponentMonitor`` a proxy registers with its component: turns each call into a non-blocking tell.

    The change is filed under the id the component was registered with, whatever id it names itself by (a bridge
    calls itself "agent_websocket_bridge" wherever it is registered).
    """

    def __init__(self, monitor: ActorRef[Any], component_id: str) -> None:
        self._monitor = monitor
        self._component_id = component_id

    def on_component_health_change(self, component_id: str, health: Any) -> None:
        self._monitor.tell(
            ComponentHealthChanged(
                component_id=self._component_id, status=health_status(health), health=as_plain(health)
            )
        )


async def _call(method: Callable[[], Any]) -> Any:
    # The seed's methods are coroutines; a component whose methods are plain functions is audited all the same
    # instead of failing with "object dict can't be used in 'await' expression".
    result = method()
    return await result if inspect.isawaitable(result) else result


def reads_both(component: Any) -> Callable[..., Any] | None:
    """The component's ``get_health_and_metrics`` when it offers one (see :class:`MonitorableComponent`)."""
    read = getattr(component, "get_health_and_metrics", None)
    return read if callable(read) else None


async def read_component(
    component_id: str, component: Any, audit_id: int, *, timeout: float | None = None
) -> ComponentReport:
    """Read a component's claimed health and metrics into a report; a read that raises gives a report with
    ``error`` set (status ``unknown``).

    With one call when the component offers ``get_health_and_metrics`` (the bridge's handle does: one round trip to
    the bridge's actor instead of two).

    :param timeout: the bound a component offering ``get_health_and_metrics(timeout=...)`` is asked to keep (None:
        its own default); the seed's two methods are called as they are
    :raises TimeoutError: when ``timeout`` is given and the component's combined read did not keep it
    """
    try:
        read = reads_both(component)
        if read is not None:
            health, metrics = await _call(read if timeout is None else partial(read, timeout=timeout))
        else:
            health = await _call(component.get_health_status)
            metrics = await _call(component.get_metrics)
    except Exception as exc:
        if timeout is not None and isinstance(exc, TimeoutError):
            raise  # the caller's bound: it decides what a read that did not answer in time means
        return ComponentReport(
            component_id=component_id,
            audit_id=audit_id,
            status="unknown",
            health={},
            metrics={},
            error=f"{type(exc).__name__}: {exc}",
        )
    return ComponentReport(
        component_id=component_id,
        audit_id=audit_id,
        status=health_status(health),
        health=as_plain(health),
        metrics=as_plain(metrics),
    )


def live_proxy(proxy: ActorRef[Any], system: ActorSystem) -> ActorRef[Any]:
    """The ref to audit a component through: ``proxy``, or the live actor now registered under its name.

    A monitoring branch that was detached and re-attached starts every component's proxy anew (from the registry)
    under the same name but with a new ref; probing the old one would only feed dead letters, so the component
    would silently never be audited again.
    """
    if proxy.is_alive:
        return proxy
    try:
        return system.lookup(proxy.name)
    except ActorNotFound:
        return proxy  # not started again (yet): the audit times out as unresponsive, as it should


class ComponentProxy(Actor[ProbeComponent]):
    """Runs a plain component object behind a mailbox, so that a hung or raising component only fails its own audit.

    The proxy is a (non-critical) child of the monitoring branch with a handler deadline: a component whose
    ``get_health_status`` hangs makes the proxy's handler time out and restart, never the monitor wait.
    """

    def __init__(self, component_id: str, component: Any, monitor: ActorRef[Any] | None) -> None:
        self.component_id = component_id
        self.component = component
        self.monitor = monitor

    async def on_start(self) -> None:
        register = getattr(self.component, "register_monitor_observer", None)
        if self.monitor is not None and callable(register):
            try:
                register(_ObserverForwarder(self.monitor, self.component_id))
            except Exception:
                logger.exception("component %s: register_monitor_observer raised", self.component_id)

    async def receive(self, message: ProbeComponent) -> ComponentReport:
        report = await read_component(self.component_id, self.component, message.audit_id)
        message.reply_to.tell(report)
        return report
