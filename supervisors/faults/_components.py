from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from actors.chat import as_plain

from ._actor_faults import InjectedFault

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._history import FaultHistory


class LyingComponent:
    """Wraps a MonitorableComponent so that it claims ``healthy`` (and healthy-looking metrics) whatever it is.

    Pair it with a fault that makes the component actually fail (e.g. its clients stop reading); the monitor's
    audit must see through the claim (``health_claim_mismatch``). While :attr:`lying`, the health changes the
    component pushes to its observers are withheld too: a liar never volunteers bad news.
    """

    def __init__(self, component: Any, *, history: FaultHistory | None = None, target: str = "component") -> None:
        self.component = component
        self.history = history
        self.target = target
        self.lying = True

    async def get_health_status(self) -> dict[str, Any]:
        """The claim: ``healthy`` while lying, the component's own report otherwise."""
        if not self.lying:
            return as_plain(await self.component.get_health_status())
        if self.history is not None:
            self.history.record(self.target, "lying_component", "trigger", "claimed healthy")
        return {"status": "healthy", "reasons": []}

    async def get_metrics(self) -> dict[str, Any]:
        """The component's metrics, without the error rate while lying."""
        metrics = as_plain(await self.component.get_metrics())
        if self.lying:
            metrics.pop("error_rate", None)
        return metrics

    def register_monitor_observer(self, observer: Any) -> None:
        """Register a filter with the component that passes health changes on only while honest."""
        register = getattr(self.component, "register_monitor_observer", None)
        if callable(register):
            register(_WithheldWhileLying(self, observer))


class _WithheldWhileLying:
    def __init__(self, liar: LyingComponent, observer: Any) -> None:
        self._liar = liar
        self._observer = observer

    def on_component_health_change(self, component_id: str, health: Any) -> Any:
        if self._liar.lying:
            if self._liar.history is not None:
                self._liar.history.record(self._liar.target, "lying_component", "trigger", "withheld a health change")
            return None
        return self._observer.on_component_health_change(component_id, health)


def raising_sink(history: FaultHistory | None = None) -> Callable[[Any], None]:
    """An alert sink that raises on every alert (detection must go on)."""

    def sink(anomaly: Any) -> None:
        if history is not None:
            history.record("alert_sink", "raising_sink", "trigger")
        raise InjectedFault("injected alert sink failure")

    return sink


def hanging_sink(history: FaultHistory | None = None) -> Callable[[Any], Awaitable[None]]:
    """An async alert sink that never returns (the dispatcher's timeout must cut it off)."""

    async def sink(anomaly: Any) -> None:
        if history is not None:
            history.record("alert_sink", "hanging_sink", "trigger")
        await anyio.sleep_forever()

    return sink
