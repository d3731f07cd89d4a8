from __future__ import annotations

import inspect
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import anyio

from actors import Actor

from ._anomaly import Anomaly

logger = logging.getLogger("agentwatch.monitor")

AlertSink = Callable[[Anomaly], Awaitable[None] | None]
"""Where the monitor's anomalies go: a callable, sync or async, given each anomaly once."""


def call_sync_sink(sink: AlertSink, anomaly: Anomaly) -> None:
    """Call a sink inline, as a monitor with no AlertDispatcher does: a sink that raises is logged, never fatal."""
    try:
        result = sink(anomaly)
    except Exception:
        logger.exception("alert sink %r raised; detection goes on", sink)
        return
    if inspect.isawaitable(result):
        # Without a dispatcher actor nobody can await it: close it so no "never awaited" warning leaks.
        close = getattr(result, "close", None)
        if callable(close):
            close()
        logger.error("alert sink %r is async but the monitor has no AlertDispatcher; the alert was not sent", sink)


class AlertDispatcher(Actor[Anomaly]):
    """Delivers anomalies to the alert sinks, away from the monitor: a sink that hangs or raises delays only this.

    Each sink call is bounded by ``sink_timeout``; a flood of alerts fills this actor's bounded mailbox (drops
    counted) and never the monitor's.
    """

    def __init__(self, sinks: Sequence[AlertSink], *, sink_timeout: float = 5.0) -> None:
        self.sinks = tuple(sinks)
        self.sink_timeout = sink_timeout
        self.failures: Counter[str] = Counter()

    async def receive(self, message: Anomaly) -> None:
        for sink in self.sinks:
            name = getattr(sink, "__name__", type(sink).__name__)
            try:
                with anyio.move_on_after(self.sink_timeout) as scope:
                    result = sink(message)
                    if inspect.isawaitable(result):
                        await result
                if scope.cancelled_caught:
                    self.failures[name] += 1
                    logger.error("alert sink %s timed out after %s s", name, self.sink_timeout)
            except Exception:
                self.failures[name] += 1
                logger.exception("alert sink %s raised; the next sinks still get the alert", name)
