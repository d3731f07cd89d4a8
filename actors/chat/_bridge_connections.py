from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final

from actors._actor import Actor
from actors._exceptions import MailboxFull
from actors.chat._bridge_messages import BridgeMessage, SubscribeOutcome, SubscribeResult, Tick
from actors.chat._bridge_progress import DeliveryReports
from actors.chat._bridge_routes import ConnectionRoutes, Route, ThreadRoutes, authorized, resume_problem
from actors.chat._bridge_slow_consumers import stalled_turns
from actors.chat._bridge_statistics import ClosedConnections, DeliveryTally, statistics_of
from actors.chat._bridge_tap import MonitorTap
from actors.chat._connection import Close, CloseCode
from actors.chat._health import LatencyHistogram
from actors.chat._replay_ring import ReplayGap, ReplayRing, RingEvictions

if TYPE_CHECKING:
    from actors._clock import Clock
    from actors._ref import ActorRef
    from actors.chat._bridge_messages import BridgeConfig, Connect, ConnectionStatistics, Subscribe

#: An extra tick, asked for just past a blocked turn's deadline (see stalled_turns).
_TICK: Final = Tick()


class BridgeConnections(Actor[BridgeMessage]):
    """The bridge's threads, connections and subscriptions: registering, authorising, resuming, catching up, closing.

    The part of :class:`AgentWebSocketBridge` that keeps who listens to what; the bridge adds the event path, the
    tick and the readings. One instance holds both parts' state, so that the event path, which reads the tables
    and counters kept here on every event, reaches them as attributes of its own (no indirection per event), and
    one actor owns it all: per-thread order and numbering need no lock.

    :param config: routing, buffering and health settings
    """

    def __init__(self, config: BridgeConfig) -> None:
        self._config = config
        self._capacity = config.writer_queue_capacity
        #: Least recently published first (for the idle sweep).
        self._threads: OrderedDict[str, ThreadRoutes] = OrderedDict()
        self._connections: dict[str, ConnectionRoutes] = {}
        self._by_writer: dict[ActorRef[Any], ConnectionRoutes] = {}
        self._lagging: dict[ConnectionRoutes, None] = {}  # an ordered set
        # Connections whose writer was handed events since the tick last found it idle: the only ones that can be
        # in a turn of sends (a turn sends what the bridge handed over) or whose writer's counters can change, so
        # the only ones a tick looks at (DeliveryTally).
        self._busy: dict[ConnectionRoutes, None] = {}
        self._tally = DeliveryTally()
        # Every frame's latency, shared by the writers of all the bridge's connections (get_metrics reads it in
        # O(1) rather than merging one histogram per connection); frames the bridge sent itself are added as zeros.
        self._latency = LatencyHistogram()
        # The replay rings' evictions, counted across rings (get_metrics reads them without visiting every thread).
        self._ring_evictions = RingEvictions()
        #: Connections closing, not yet forgotten (the rest of _connections are open).
        self._closing = 0
        # Totals of connections already closed and forgotten, and the last few's final statistics.
        self._closed = ClosedConnections(config.closed_connections_kept)
        self._clock: Clock | None = None
        # The monitoring tap: which monitor gets the accepted events, and the counts of what it did not get.
        self._tap = MonitorTap(config.tap_shed_at)
        # What the monitor is still to be told of delivery. The event path marks threads unconfirmed in the very
        # dict it keeps, through this reference of its own (one lookup fewer per run of events).
        self._reports = DeliveryReports()
        self._unconfirmed = self._reports.unconfirmed
        # Counters (see BridgeMetrics for the identities they obey).
        self._caught_up = 0
        self._deferred_on_close = 0
        self._replayed = 0
        self._opened = 0
        self._refused = 0
        self._resumes = 0
        self._resume_gaps = 0
        #: Routes of open connections, and the events deferred on them not yet caught up (kept as they change).
        self._subscriptions = 0
        self._deferred_pending = 0

    # ------------------------------------------------------------------ threads

    def _open_thread(self, thread_id: str) -> ThreadRoutes:
        config = self._config
        thread = ThreadRoutes(
            thread_id, ReplayRing(config.replay_capacity, config.replay_max_age, evictions=self._ring_evictions)
        )
        self._threads[thread_id] = thread
        return thread

    # ------------------------------------------------------------------ connections

    def _connect(self, message: Connect) -> bool:
        if message.connection_id in self._connections:
            return False
        connection = ConnectionRoutes(message.connection_id, message.writer, message.principal, message.progress)
        message.progress.latency = self._latency  # before any frame is handed over: its writer records there
        self._connections[message.connection_id] = connection
        self._by_writer[message.writer] = connection
        self._opened += 1
        self.watch(message.writer)
        return True

    def _close_connection(
        self, connection: ConnectionRoutes, code: int, reason: str, *, tell_writer: bool = True, drain: float = 0.0
    ) -> None:
        """Stop routing to a connection and have its writer close it; it is forgotten once the writer stops."""
        if connection.closing:
            return
        connection.closing = True
        self._closing += 1
        connection.close_code = code
        for route in list(connection.routes.values()):
            self._remove_route(route)
        connection.full_since = None
        self._lagging.pop(connection, None)
        if tell_writer and connection.writer.is_alive:
            # Past the bound: a close must never be dropped, and there is only one per connection.
            connection.writer.tell_control(Close(code=code, reason=reason, drain=drain))

    def _close_all(self, code: int, reason: str, *, drain: float = 0.0) -> None:
        for connection in list(self._connections.values()):
            self._close_connection(connection, code, reason, drain=drain)

    def _on_writer_stopped(self, writer: ActorRef[Any]) -> None:
        connection = self._by_writer.pop(writer, None)
        if connection is None:
            return
        if not connection.closing:
            # The writer closed on its own (the client stopped reading, or a send failed): stop routing to it.
            self._close_connection(connection, CloseCode.ABNORMAL, "writer stopped", tell_writer=False)
        if connection in self._busy:
            del self._busy[connection]
            self._tally.read(connection)  # its last sends, before it is forgotten
        self._closing -= 1
        del self._connections[connection.connection_id]
        self._closed.record(connection)

    def _connection_statistics(self, connection_id: str | None) -> tuple[ConnectionStatistics, ...]:
        if connection_id is None:
            return tuple(statistics_of(c) for c in self._connections.values())
        connection = self._connections.get(connection_id)
        if connection is not None:
            return (statistics_of(connection),)
        return self._closed.last_of(connection_id)

    # ------------------------------------------------------------------ subscriptions

    def _subscribe(self, message: Subscribe) -> SubscribeResult:
        connection = self._connections.get(message.connection_id)
        if connection is None or connection.closing:
            return SubscribeResult(outcome=SubscribeOutcome.UNKNOWN_CONNECTION)
        thread_id = message.thread_id
        existing = connection.routes.get(thread_id)
        if existing is not None:
            return SubscribeResult(outcome=SubscribeOutcome.ALREADY_SUBSCRIBED, last_seq=existing.thread.last_seq)
        if not authorized(self._config.authorize, connection.principal, thread_id):
            self._refused += 1
            self._close_connection(connection, CloseCode.POLICY_VIOLATION, f"not authorised for thread {thread_id!r}")
            return SubscribeResult(outcome=SubscribeOutcome.REFUSED, close_code=CloseCode.POLICY_VIOLATION)
        thread = self._threads.get(thread_id)
        if thread is None:
            thread = self._open_thread(thread_id)
        after_seq = message.after_seq
        if after_seq is not None:
            self._resumes += 1
            assert self._clock is not None
            problem = resume_problem(thread, after_seq, self._clock.now_ms())
            if problem is not None:
                self._resume_gaps += 1
                self._close_connection(connection, CloseCode.REPLAY_GAP, f"{problem}: refetch a snapshot")
                return SubscribeResult(
                    outcome=SubscribeOutcome.REPLAY_GAP, last_seq=thread.last_seq, close_code=CloseCode.REPLAY_GAP
                )
        told_seq = thread.last_seq if after_seq is None else after_seq
        route = Route(connection, thread, told_seq)
        thread.routes[connection.connection_id] = route
        thread.routes_changed()
        connection.routes[thread_id] = route
        self._subscriptions += 1
        pending = thread.last_seq - told_seq
        if pending:
            # A resume: the replay goes through the same path as a lagging connection's catch-up, so it is
            # handed over in order, before any live event, as fast as the writer's queue allows.
            route.lagging = True
            connection.lagging_routes += 1
            self._catch_up(route)
            if route.lagging and connection.full_since is None and not connection.closing:
                assert self._clock is not None
                connection.full_since = self._clock.now()
                self._lagging[connection] = None
        return SubscribeResult(outcome=SubscribeOutcome.SUBSCRIBED, last_seq=thread.last_seq, replay_pending=pending)

    def _unsubscribe(self, connection_id: str, thread_id: str) -> None:
        connection = self._connections.get(connection_id)
        if connection is None:
            return
        route = connection.routes.get(thread_id)
        if route is not None:
            self._remove_route(route)
            if connection.lagging_routes == 0 and connection.full_since is not None:
                connection.full_since = None
                self._lagging.pop(connection, None)

    def _remove_route(self, route: Route) -> None:
        connection = route.connection
        thread = route.thread
        del thread.routes[connection.connection_id]
        thread.routes_changed()
        del connection.routes[thread.thread_id]
        connection.forget_route(route)
        self._subscriptions -= 1
        self._deferred_pending -= route.deferred
        if route.lagging:
            route.lagging = False
            connection.lagging_routes -= 1
        self._deferred_on_close += route.deferred
        route.deferred = 0
        if not thread.routes:
            self._reports.thread_left(thread, monitored=self._tap.monitor_ref is not None)

    # ------------------------------------------------------------------ catching up

    def _catch_up(self, route: Route) -> None:
        """Hand a lagging route's missed events from the ring to its writer, as far as its queue has room."""
        connection = route.connection
        room = self._capacity - (connection.told - connection.progress.settled)
        if room <= 0 or connection.closing:
            return
        thread = route.thread
        assert self._clock is not None
        try:
            missed = thread.ring.since(route.told_seq, self._clock.now_ms())
        except ReplayGap as gap:
            self._resume_gaps += 1
            self._close_connection(
                connection,
                CloseCode.REPLAY_GAP,
                f"fell behind the replay ring on thread {thread.thread_id!r} ({gap}): refetch a snapshot",
            )
            return
        writer = connection.writer
        subscribed_at = route.subscribed_at
        if missed:
            self._busy[connection] = None
        for item in missed[:room]:
            try:
                writer.tell(item)
            except MailboxFull:
                return
            connection.told += 1
            route.told_seq = item.seq
            if item.seq > subscribed_at:
                route.deferred -= 1
                self._deferred_pending -= 1
                connection.caught_up += 1
                self._caught_up += 1
            else:
                connection.replayed += 1
                self._replayed += 1
        if route.told_seq == thread.last_seq:
            route.lagging = False
            connection.lagging_routes -= 1
            if connection.lagging_routes == 0:
                connection.full_since = None
                self._lagging.pop(connection, None)

    def _on_writer_drained(self, connection_id: str) -> None:
        connection = self._connections.get(connection_id)
        if connection is None or not connection.lagging_routes:
            return
        for route in list(connection.routes.values()):
            if route.lagging:
                self._catch_up(route)

    # ------------------------------------------------------------------ slow consumers

    def _catch_up_lagging(self, now: float) -> None:
        """Catch every lagging connection up as far as it has room; close those lagging for ``slow_consumer_after``."""
        deadline = self._config.slow_consumer_after
        for connection in list(self._lagging):
            for route in list(connection.routes.values()):
                if route.lagging:
                    self._catch_up(route)
            since = connection.full_since
            if since is not None and now - since >= deadline:
                self._close_connection(
                    connection,
                    CloseCode.SLOW_CONSUMER,
                    f"slow consumer: queue full for {now - since:.3g} s; resume with afterSeq",
                )

    def _close_stalled_writers(self, now: float) -> None:
        """Close every connection whose writer has been blocked in one turn of sends for ``slow_consumer_after``.

        Only the busy connections are looked at: a turn sends frames the bridge handed to the writer.
        """
        config = self._config
        stalled, extra_ticks = stalled_turns(
            self._busy, now, slow_consumer_after=config.slow_consumer_after, next_tick=now + config.tick_interval
        )
        for delay in extra_ticks:
            self.send_after(delay, _TICK)
        for connection in stalled:
            progress = connection.progress
            assert progress.turn_started is not None
            reason = f"slow consumer: a send blocked for {now - progress.turn_started:.3g} s; resume with afterSeq"
            if not connection.closing:
                self._close_connection(connection, CloseCode.SLOW_CONSUMER, reason)
            else:
                # Already closing (its Close waits behind the blocked send): closed with the code it was given.
                reason = f"{reason} (while closing)"
            interrupt = progress.interrupt
            if interrupt is not None:
                assert connection.close_code is not None
                interrupt(connection.close_code, reason)
