from __future__ import annotations

import logging
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

import msgspec

from actors._exceptions import MailboxFull
from actors._ref import RefState
from actors.chat._bridge_messages import ConnectionStatistics
from actors.chat._components import ComponentHealthChanged
from actors.chat._connection import CloseCode
from actors.chat._health import HealthSample

if TYPE_CHECKING:
    from actors._ref import ActorRef
    from actors.chat._bridge_routes import ConnectionRoutes
    from actors.chat._health import ComponentHealth

# The bridge's logger: what is logged here is logged by the bridge.
logger = logging.getLogger("agentwatch.chat.bridge")


def statistics_of(connection: ConnectionRoutes, *, finished: bool = False) -> ConnectionStatistics:
    """What one connection was handed, sent and lost, as :class:`ConnectionStatistics`.

    :param finished: its writer has stopped (what is still queued for it was discarded)
    """
    progress = connection.progress
    # Handed to the writer but not yet taken out of its mailbox; once the writer has stopped, these were
    # dead-lettered by the runtime, i.e. discarded when the connection closed.
    in_mailbox = connection.told - progress.taken
    if finished:
        # A writer that failed (rather than closed) leaves its own queue behind: discarded as well.
        state = "closed"
        discarded = progress.discarded + progress.pending + in_mailbox
        queued = 0
    else:
        state = "closing" if connection.closing else "lagging" if connection.lagging_routes else "open"
        discarded = progress.discarded
        queued = progress.pending + in_mailbox
    close_code = progress.close_code if progress.closed else connection.close_code
    if finished and close_code is None:
        close_code = CloseCode.ABNORMAL
    # Frames the bridge sent itself count as received and delivered, as the writer's do.
    sent_directly = connection.sent_directly()
    return ConnectionStatistics(
        connection_id=connection.connection_id,
        principal=connection.principal,
        state=state,
        threads=tuple(connection.routes),
        received=connection.told + sent_directly,
        delivered=progress.delivered + sent_directly,
        coalesced=progress.coalesced,
        discarded_on_close=discarded,
        queued=queued,
        replayed=connection.replayed,
        caught_up=connection.caught_up,
        deferred=sum(route.deferred for route in connection.routes.values()),
        send_errors=progress.send_errors,
        delivered_seq=connection.delivered_seq(),
        close_code=close_code,
        close_reason=progress.close_reason,
    )


class ClosedConnections:
    """What the bridge keeps of the connections it has closed and forgotten: the close codes, what their writers
    left queued when they stopped, and the last few connections' final statistics.

    What they sent and discarded while running is in the bridge's running totals already (:class:`DeliveryTally`,
    the shared latency histogram), so nothing here is summed per connection when the metrics are read.

    :param kept: how many closed connections' final statistics are kept (``BridgeConfig.closed_connections_kept``)
    """

    __slots__ = ("by_code", "left_queued", "slow_closes", "statistics")

    def __init__(self, kept: int) -> None:
        self.statistics: deque[ConnectionStatistics] = deque(maxlen=kept)
        #: Events still queued for a writer when it stopped (in its own queue or its mailbox): discarded on close.
        self.left_queued = 0
        self.by_code: Counter[int] = Counter()
        self.slow_closes = 0

    def record(self, connection: ConnectionRoutes) -> None:
        """Count a connection whose writer has stopped (read by the bridge's DeliveryTally first), keep its final
        statistics."""
        final = statistics_of(connection, finished=True)
        self.left_queued += final.discarded_on_close - connection.progress.discarded
        assert final.close_code is not None
        self.by_code[final.close_code] += 1
        if final.close_code == CloseCode.SLOW_CONSUMER:
            self.slow_closes += 1
        self.statistics.append(final)

    def last_of(self, connection_id: str) -> tuple[ConnectionStatistics, ...]:
        """The final statistics of the last closed connection with this id still kept (empty if none is)."""
        return tuple(s for s in self.statistics if s.connection_id == connection_id)[-1:]


class ConnectionScan(msgspec.Struct, frozen=True, kw_only=True):
    """What the bridge's connections add up to now, closed ones included: what its tick reports and judges.

    :param sent_directly: frames the bridge sent itself (the fast path), to every connection it ever had
    :param delivered: events sent as a frame of their own, or as the last of a coalesced frame
    :param coalesced: events merged into a later event's frame that was sent
    :param errors: sends that failed
    :param discarded: events writers threw away because their connection closed (those left queued when a writer
        stopped are not here: see :attr:`ClosedConnections.left_queued`)
    :param queued: events handed to open connections' writers and not yet settled
    :param fullest: the most of those for one connection
    :param closing_queued: the same for connections that are closing
    :param closing_fullest: the most of those for one closing connection
    :param open: connections not closing
    """

    sent_directly: int
    delivered: int
    coalesced: int
    errors: int
    discarded: int
    queued: int
    fullest: int
    closing_queued: int
    closing_fullest: int
    open: int


class DeliveryTally:
    """The bridge's running totals of what its connections' writers sent, merged and failed to send.

    They are kept without a pass over every connection: a writer only sends what the bridge handed it, so only the
    connections handed something since they were last found idle (``busy``) can have changed, and each of those
    is read as the change since it was last read. Frames the bridge sent itself (the fast path) are not in the
    writers' counters; the bridge counts them as it routes. A tick so costs O(busy connections), not
    O(connections).
    """

    __slots__ = ("coalesced", "discarded", "errors", "writer_sent")

    def __init__(self) -> None:
        self.writer_sent = 0
        self.coalesced = 0
        self.errors = 0
        self.discarded = 0

    def read(self, connection: ConnectionRoutes) -> None:
        """Add what the connection's writer did since it was last read (before it stops being read)."""
        progress = connection.progress
        writer_sent = progress.delivered
        self.writer_sent += writer_sent - connection.seen_sent
        connection.seen_sent = writer_sent
        coalesced = progress.coalesced
        self.coalesced += coalesced - connection.seen_coalesced
        connection.seen_coalesced = coalesced
        errors = progress.send_errors
        self.errors += errors - connection.seen_errors
        connection.seen_errors = errors
        discarded = progress.discarded
        self.discarded += discarded - connection.seen_discarded
        connection.seen_discarded = discarded

    def scan(self, busy: dict[ConnectionRoutes, None], *, sent_directly: int, open_connections: int) -> ConnectionScan:
        """Read every busy connection, forget those found idle, and return the totals.

        :param busy: connections handed events since they were last found idle (pruned in place)
        :param sent_directly: frames the bridge sent itself, to every connection it ever had
        :param open_connections: connections not closing
        """
        queued = fullest = closing_queued = closing_fullest = 0
        idle: list[ConnectionRoutes] = []
        for connection in busy:
            self.read(connection)
            progress = connection.progress
            depth = connection.told - progress.settled
            if depth:
                if not connection.closing:
                    queued += depth
                    if depth > fullest:
                        fullest = depth
                else:
                    closing_queued += depth
                    if depth > closing_fullest:
                        closing_fullest = depth
            elif progress.turn_started is None:
                # Everything handed over is settled and no turn is running: only a new hand-over (which puts it
                # back) can change its writer's counters.
                idle.append(connection)
        for connection in idle:
            del busy[connection]
        return ConnectionScan(
            sent_directly=sent_directly,
            delivered=sent_directly + self.writer_sent,
            coalesced=self.coalesced,
            errors=self.errors,
            discarded=self.discarded,
            queued=queued,
            fullest=fullest,
            closing_queued=closing_queued,
            closing_fullest=closing_fullest,
            open=open_connections,
        )


def sample_health(
    scan: ConnectionScan,
    *,
    at: float,
    capacity: int,
    lagging: int,
    tap_lost: int,
    inbox_dropped: int,
    monitor: ActorRef[Any] | None,
    monitor_attached: bool,
) -> HealthSample:
    """Measure the bridge now, for its health window.

    :param scan: the connections, scanned now
    :param at: loop time, in seconds
    :param monitor: the configured monitor (None: none is), and ``monitor_attached`` whether taps reach it now
    """
    problem = None
    if monitor is not None and not monitor_attached:
        problem = f"monitor {monitor.name!r} is {monitor.state}: events are not being monitored"
    return HealthSample(
        at=at,
        attempts=scan.delivered + scan.errors,
        errors=scan.errors,
        delivered=scan.delivered,
        tap_lost=tap_lost,
        inbox_dropped=inbox_dropped,
        queued=scan.queued,
        fullest=scan.fullest,
        capacity=capacity,
        connections=scan.open,
        lagging=lagging,
        monitor_problem=problem,
    )


def broadcast_health(observers: list[ActorRef[Any]], component_id: str, health: ComponentHealth) -> None:
    """Tell every health observer of a change in the bridge's health; forget observers that have stopped.

    :param observers: the bridge's observers (``BridgeWiring.observers``), pruned in place
    :param component_id: the id the bridge reports health under
    """
    change = ComponentHealthChanged(
        component_id=component_id, status=health.status.value, health=msgspec.to_builtins(health)
    )
    for observer in list(observers):
        if observer.state == RefState.STOPPED:
            observers.remove(observer)
            continue
        try:
            observer.tell(change)
        except MailboxFull:
            logger.warning("health observer %s refused a health change (mailbox full)", observer.name)
