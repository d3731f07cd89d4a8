from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final, assert_never

import anyio
import msgspec

from actors._actor import Actor
from actors._exceptions import MailboxFull
from actors._message import ExitKind, Terminated
from actors.chat._bridge_messages import (
    AttachMonitor,
    BridgeConfig,
    BridgeMessage,
    BridgeMetrics,
    Connect,
    Disconnect,
    GetConnectionStatistics,
    GetHealth,
    GetHealthAndMetrics,
    GetMetrics,
    Publish,
    RegisterObserver,
    Subscribe,
    SubscribeOutcome,
    SubscribeResult,
    Tick,
    Unsubscribe,
)
from actors.chat._bridge_routes import (
    ConnectionRoutes,
    Route,
    ThreadRoutes,
    authorized,
    confirmed_delivery,
    resume_problem,
    sweep_idle_threads,
)
from actors.chat._bridge_statistics import (
    ClosedConnections,
    ConnectionScan,
    DeliveryTally,
    broadcast_health,
    sample_health,
    statistics_of,
)
from actors.chat._bridge_tap import MonitorTap
from actors.chat._connection import (
    Close,
    CloseCode,
    WriterDrained,
)
from actors.chat._events import EVENT_CLASSES, StampedEvent, stamp
from actors.chat._health import ComponentHealth, HealthStatus, HealthWindow, LatencyHistogram
from actors.chat._replay_ring import ReplayGap, ReplayRing, RingEvictions
from actors.chat._tap import DeliveryProgress, ReplaySnapshot

if TYPE_CHECKING:
    from actors._clock import Clock
    from actors._message import ExitReason
    from actors._ref import ActorRef
    from actors.chat._bridge_messages import ConnectionStatistics
    from actors.chat._health import HealthSample

logger = logging.getLogger("agentwatch.chat.bridge")

_EVENT_TYPES: Final = frozenset(EVENT_CLASSES.values())

#: Seconds each connection may take, at a graceful shutdown, to send what is queued for it before its 1001 close.
SHUTDOWN_DRAIN: Final = 1.0
_SHUTDOWN_POLL: Final = 0.005
_TICK: Final = Tick()
#: How long after its deadline a blocked turn of sends is ended (1 µs: "longer than", robustly in floats).
_DEADLINE_SLACK: Final = 1e-6
#: Threads looked at per tick when sweeping out idle ones (bounds the tick's cost, not the memory).
_SWEEP_PER_TICK: Final = 1000


class BridgeWiring:
    """What a bridge keeps across restarts of its instance: the monitor's ref and the health observers' refs.

    Created once with the bridge's ref and handed to every instance's constructor (as the mailbox outlives the
    instance); only the running instance changes it, in its own handlers.
    """

    __slots__ = ("monitor", "monitor_set", "observers")

    def __init__(self) -> None:
        #: The monitor set by AttachMonitor (it overrides ``BridgeConfig.monitor`` once set, even to None).
        self.monitor: ActorRef[Any] | None = None
        self.monitor_set = False
        self.observers: list[ActorRef[Any]] = []


class AgentWebSocketBridge(Actor[BridgeMessage]):
    """Routes agent events to the WebSocket connections subscribed to their thread, and taps them to the monitor.

    One actor owns every thread's numbering, replay ring and routes, so per-thread order and sequence numbers need
    no lock. Each connection has its own :class:`ConnectionWriter` actor with a bounded queue: a slow client only
    ever delays itself. While a writer is idle and its sink can take a frame without waiting, the bridge writes the
    frame itself, in its own pass (the fast path), rather than waking the writer's task for it. A connection whose
    queue is full lags: its live events wait in the replay ring and are handed over as it drains; one that lags for
    ``slow_consumer_after`` is closed with 4001. Every accepted event is tapped to the monitor without waiting, one
    hand-off per run of events routed (:class:`MonitorTap`). See ``docs/bridge.md``.

    :param config: routing, buffering and health settings
    :param wiring: the monitor and observers, kept across restarts of this actor (one per ref)
    """

    def __init__(self, config: BridgeConfig | None = None, wiring: BridgeWiring | None = None) -> None:
        self._config = config = config if config is not None else BridgeConfig()
        self._wiring = wiring if wiring is not None else BridgeWiring()
        self._capacity = config.writer_queue_capacity
        self._text = config.frame_kind == "text"
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
        #: Live events handed to a writer (the rest of fan_out_sent the bridge sent itself).
        self._told_live = 0
        #: Connections closing, not yet forgotten (the rest of _connections are open).
        self._closing = 0
        self._unconfirmed: dict[ThreadRoutes, None] = {}  # threads with routed events not yet reported delivered
        self._unsubscribed: dict[str, None] = {}  # threads whose last connection left, not yet reported
        # Totals of connections already closed and forgotten, and the last few's final statistics.
        self._closed = ClosedConnections(config.closed_connections_kept)
        self._clock: Clock | None = None
        self._self: ActorRef[BridgeMessage] | None = None
        # The monitoring tap: which monitor gets the accepted events, and the counts of what it did not get.
        self._tap = MonitorTap(config.tap_shed_at)
        #: Events sent to clients (delivered + coalesced, all connections) as of the last DeliveryProgress.
        self._reported_delivered = 0
        self._health: ComponentHealth | None = None
        self._health_window = HealthWindow(config.thresholds, config.health_window)
        # Counters (see BridgeMetrics for the identities they obey).
        self._received = 0
        self._invalid = 0
        self._unrouted = 0
        self._fan_out_total = 0
        self._fan_out_sent = 0
        self._deferred = 0
        self._caught_up = 0
        self._deferred_on_close = 0
        self._replayed = 0
        self._opened = 0
        self._refused = 0
        self._resumes = 0
        self._resume_gaps = 0
        self._evicted_rings = 0
        #: Routes of open connections, and the events deferred on them not yet caught up (kept as they change).
        self._subscriptions = 0
        self._deferred_pending = 0

    # ------------------------------------------------------------------ lifecycle

    async def on_start(self) -> None:
        self._clock = self.clock
        self._self = self.ref
        wiring = self._wiring
        self._tap.set_monitor(wiring.monitor if wiring.monitor_set else self._config.monitor)
        # A baseline, so that whatever happens before the first tick counts in the health window.
        self._health_window.record(self._sample())
        self.send_every(self._config.tick_interval, _TICK)

    async def on_stop(self, reason: ExitReason) -> None:
        if reason.kind is ExitKind.ERROR:
            self._close_all(CloseCode.SERVICE_RESTART, "bridge restarting: resume with afterSeq")
            return
        # A graceful shutdown: each writer first sends what is queued for its client (for at most SHUTDOWN_DRAIN
        # seconds), then closes with 1001. Waiting for them here (bounded) keeps the stop from overtaking the
        # drain: a client gets the terminal events published before the shutdown, then the close.
        self._close_all(CloseCode.GOING_AWAY, "server shutting down", drain=SHUTDOWN_DRAIN)
        connections = list(self._connections.values())
        writers = [connection.writer for connection in connections]
        with anyio.move_on_after(SHUTDOWN_DRAIN):
            await _wait_stopped(writers)
        # Past the drain: a writer still in a turn of sends to a client that reads too slowly may not even have read
        # its Close yet. Interrupted, it closes with 1001 now; stopped instead, its client would be told nothing.
        for connection in connections:
            interrupt = connection.progress.interrupt
            if interrupt is not None and connection.writer.is_alive:
                interrupt(CloseCode.GOING_AWAY, "server shutting down: drain deadline passed; resume with afterSeq")
        with anyio.move_on_after(self._config.close_timeout):
            await _wait_stopped(writers)

    def on_kill(self) -> None:
        self._close_all(CloseCode.GOING_AWAY, "server shutting down")

    def _close_all(self, code: int, reason: str, *, drain: float = 0.0) -> None:
        for connection in list(self._connections.values()):
            self._close_connection(connection, code, reason, drain=drain)

    # ------------------------------------------------------------------ dispatch

    async def receive(self, message: BridgeMessage) -> Any:
        match message:
            case Publish():
                # The publishes queued right behind this one are routed in the same pass (one dispatch for the
                # run, see _route), and their taps go to the monitor together once the run is routed. One clock
                # read for the run: its events were all accepted when it was taken from the mailbox (observed_at
                # counts whole ms, and a run of 256 takes ~1.5 ms to route under a flood; a read per event was ~3%
                # of the bridge's cost per event on asyncio and more on trio). Taken as a list
                # (Actor.take_queued_list, ~230 instructions per event fewer than the lazy take_queued).
                assert self._clock is not None
                run = self.take_queued_list(Publish)
                run.insert(0, message)
                self._route(run, self._clock.now_ms())
            case WriterDrained(connection_id=connection_id):
                self._on_writer_drained(connection_id)
            case Tick():
                self._on_tick()
            case Connect():
                return self._connect(message)
            case Subscribe():
                return self._subscribe(message)
            case Unsubscribe(connection_id=connection_id, thread_id=thread_id):
                self._unsubscribe(connection_id, thread_id)
            case Disconnect(connection_id=connection_id, code=code, reason=reason):
                connection = self._connections.get(connection_id)
                if connection is not None:
                    self._close_connection(connection, code, reason)
            case Terminated(ref=ref):
                self._on_writer_stopped(ref)
            case AttachMonitor(monitor=monitor):
                self._wiring.monitor = monitor
                self._wiring.monitor_set = True
                self._tap.set_monitor(monitor)
            case RegisterObserver(observer=observer):
                if observer not in self._wiring.observers:
                    self._wiring.observers.append(observer)
            case GetHealth():
                return self._evaluate_health(record=False)
            case GetMetrics():
                return self._metrics()
            case GetHealthAndMetrics():
                scan = self._scan()  # one scan for both: they are as of the same moment
                return self._evaluate_health(record=False, scan=scan), self._metrics(scan)
            case GetConnectionStatistics(connection_id=connection_id):
                return self._connection_statistics(connection_id)
            case ReplaySnapshot():
                return self._replay_snapshot()
            case _:
                assert_never(message)
        return None

    # ------------------------------------------------------------------ the critical path

    def _route(self, run: list[Publish], accepted_at: int) -> None:
        """Number, keep and route a run of publishes accepted at ``accepted_at`` (ms), then tap them to the monitor.

        One loop for the whole run rather than a call per event: what every event reads (the tables, the tap, the
        settings) is looked up once, and the counters are added up here and stored once. If a publish raises, it
        is consumed (as any failing message is), the events routed before it are still tapped, and those behind it
        go back to the head of the mailbox (requeue), for the restarted bridge.
        """
        threads = self._threads
        capacity = self._capacity
        text = self._text
        tap = self._tap
        # A run cannot change the monitor: AttachMonitor and the tick's refresh are messages of their own.
        tapped = tap.pending if tap.monitor is not None else None
        skip_taps = tapped is None and tap.monitor_ref is not None
        unconfirmed = self._unconfirmed
        handled = fan_out_total = fan_out_sent = unrouted = 0
        try:
            for message in run:
                handled += 1
                event = message.event
                thread_id = message.thread_id
                run_id = message.run_id
                if type(event) not in _EVENT_TYPES or type(thread_id) is not str or type(run_id) is not str:
                    self._reject("not an event for a str thread and run", message)
                    continue
                timestamp = event.timestamp
                if timestamp is not None and type(timestamp) is not int:
                    # A struct built in code is not validated: the monitor does arithmetic on this field.
                    self._reject(f"$.event.timestamp: expected int or None, got {type(timestamp).__name__}", message)
                    continue
                thread = threads.get(thread_id)
                if thread is None:
                    thread = self._open_thread(thread_id)
                seq = thread.last_seq + 1
                routes = thread.fan_out_routes
                if routes is None:
                    routes = thread.current_routes()
                fan_out = len(routes)
                try:
                    stamped = stamp(
                        event, thread_id=thread_id, run_id=run_id, seq=seq, observed_at=accepted_at, fan_out=fan_out
                    )
                except (TypeError, ValueError, OverflowError, msgspec.MsgspecError) as exc:
                    # Metadata that is not a mapping, a value JSON cannot hold: one counter, and the seq is not used.
                    self._reject(f"its event cannot be encoded ({exc})", message)
                    continue
                thread.last_seq = seq
                thread.ring.append(stamped)
                if thread.last_active != accepted_at:
                    thread.last_active = accepted_at
                    # Least recently published first, for the idle sweep. A thread already published to in this ms
                    # keeps its place: what follows it was published to in this ms too, or is an idle thread the
                    # sweep looked at and kept (it looks at it again once this one moves on or ages out).
                    threads.move_to_end(thread_id)
                if fan_out:
                    fan_out_total += fan_out
                    thread.routed_seq = seq
                    data: str | bytes | None = None
                    for route in routes:
                        connection = route.connection
                        if route.lagging:
                            self._defer(route)
                            continue
                        progress = connection.progress
                        outstanding = connection.told - progress.settled
                        if not outstanding:
                            send_nowait = progress.send_nowait
                            if send_nowait is not None:
                                # The fast path: the writer is idle, so the frame is written here, in order, without
                                # waking the writer's task for it (one wake-up per frame is what sparse traffic
                                # cost).
                                if data is None:
                                    data = stamped.frame.decode() if text else stamped.frame  # once per event
                                try:
                                    send_nowait(data)
                                except Exception:  # WouldBlock, or a failing sink: the writer sends it (and copes)
                                    pass
                                else:
                                    # Counted on the route alone: its seq, for delivery confirmations. How many
                                    # frames the bridge sent itself follows from the route's counts (Route.handed),
                                    # and each is delivered with latency 0; the writer's counters
                                    # (ConnectionProgress) stay its own.
                                    route.sent_seq = seq
                                    fan_out_sent += 1
                                    continue
                        elif outstanding >= capacity:
                            self._defer(route)
                            continue
                        if self._hand_to_writer(route, stamped):
                            fan_out_sent += 1
                else:
                    unrouted += 1
                if tapped is not None:
                    tapped.append(stamped)
                    if fan_out:
                        unconfirmed[thread] = None  # its delivery is reported to the monitor on a tick
                elif skip_taps:
                    tap.skipped += 1
        except BaseException:
            self.requeue(run[handled:])
            raise
        finally:
            self._received += handled
            self._fan_out_total += fan_out_total
            self._fan_out_sent += fan_out_sent
            self._unrouted += unrouted
            if tap.pending:
                tap.flush()

    def _reject(self, problem: str, message: Publish) -> None:
        """Count a Publish the bridge cannot accept: agent code is trusted, but a bad one costs a counter only."""
        self._invalid += 1
        logger.warning("rejected a Publish: %s: %r", problem, message)

    def _hand_to_writer(self, route: Route, stamped: StampedEvent) -> bool:
        """Queue a routed event for the route's writer (its sink cannot take it now); False if it was held back."""
        connection = route.connection
        try:
            connection.writer.tell(stamped)
        except MailboxFull:  # the bound the bridge keeps makes this unlikely; if it happens, nothing is lost
            self._defer(route)
            return False
        connection.told += 1
        route.handed += 1
        self._told_live += 1
        self._busy[connection] = None
        route.thread.needs_scan = True
        return True

    def _open_thread(self, thread_id: str) -> ThreadRoutes:
        config = self._config
        thread = ThreadRoutes(
            thread_id, ReplayRing(config.replay_capacity, config.replay_max_age, evictions=self._ring_evictions)
        )
        self._threads[thread_id] = thread
        return thread

    def _defer(self, route: Route) -> None:
        """Hold a routed event back for a connection that cannot take it now (it is in the thread's ring)."""
        # No catch-up from here: it may close the connection, and this runs inside the loop over the thread's
        # routes. The writer reports when it has drained (WriterDrained), and the tick catches up as well.
        route.deferred += 1
        route.handed += 1
        self._deferred += 1
        self._deferred_pending += 1
        route.thread.needs_scan = True
        if route.lagging:
            return
        # It was not lagging, so it had been handed everything before the event now being routed.
        route.told_seq = route.thread.last_seq - 1
        route.lagging = True
        connection = route.connection
        connection.lagging_routes += 1
        if connection.full_since is None:
            assert self._clock is not None
            connection.full_since = self._clock.now()
            self._lagging[connection] = None

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

    # ------------------------------------------------------------------ connections and subscriptions

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
            # Nobody is owed anything on this thread any more: a client that comes back resumes from the ring.
            self._unconfirmed.pop(thread, None)
            thread.reported_seq = thread.routed_seq = thread.last_seq
            if self._tap.monitor_ref is not None:
                self._unsubscribed[thread.thread_id] = None

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

    def _on_writer_drained(self, connection_id: str) -> None:
        connection = self._connections.get(connection_id)
        if connection is None or not connection.lagging_routes:
            return
        for route in list(connection.routes.values()):
            if route.lagging:
                self._catch_up(route)

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

    # ------------------------------------------------------------------ the tick

    def _on_tick(self) -> None:
        assert self._clock is not None
        now = self._clock.now()
        self._close_stalled_writers(now)
        if self._lagging:
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
        # One look at the (busy) connections for both the delivery report and the health sample.
        scan = self._scan()
        monitor = self._tap.refresh()
        if monitor is not None and (self._unconfirmed or self._unsubscribed):
            self._report_delivery(monitor, scan)
        self._sweep_idle_threads()
        self._evaluate_health(record=True, scan=scan)

    def _close_stalled_writers(self, now: float) -> None:
        """Close every connection whose writer has been blocked in one turn of sends for ``slow_consumer_after``.

        The writer keeps no timer of its own (one per turn cost more than the frames): it records when its turn
        started, and the tick looks. A turn whose deadline falls before the next tick gets one extra tick just after
        the deadline, so a client that stopped reading is closed when its time is up, not at a tick boundary.

        Only the busy connections are looked at: a turn sends frames the bridge handed to the writer.
        """
        after = self._config.slow_consumer_after
        next_tick = now + self._config.tick_interval
        stalled: list[ConnectionRoutes] = []
        for connection in self._busy:
            started = connection.progress.turn_started
            if started is None:
                continue
            # Just past the deadline: a send that completes at the deadline itself is not a stalled one (and
            # which of the two happens first at one instant would be up to the scheduler).
            due = started + after + _DEADLINE_SLACK
            if now >= due:
                stalled.append(connection)
            elif due < next_tick:
                self.send_after(due - now, _TICK)
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

    def _report_delivery(self, monitor: ActorRef[Any], scan: ConnectionScan, *, resync: bool = False) -> None:
        """Tell the monitor how far delivery got per thread, and which threads lost their last connection.

        :param scan: the connections, scanned now (what was sent so far)
        :param resync: the full re-report for a (re)starting monitor (see :class:`DeliveryProgress`)
        """
        assert self._clock is not None
        delivered_total = scan.delivered + scan.coalesced
        delivered = delivered_total - self._reported_delivered
        confirmed = confirmed_delivery(self._unconfirmed)
        if not confirmed and not self._unsubscribed and not delivered:
            return
        # The report goes through the monitor's drop-on-full mailbox like the taps; one that is dropped is kept
        # and sent again on the next tick (confirmations are cumulative, and so is what it says was delivered).
        report = DeliveryProgress(
            confirmed=confirmed,
            unsubscribed=tuple(self._unsubscribed),
            at=self._clock.now_ms(),
            delivered=delivered,
            resync=resync,
        )
        try:
            monitor.tell(report)
        except MailboxFull:
            return
        inbox = self._tap.monitor_queue
        if inbox is not None and (not inbox or inbox[-1] is not report):
            return
        self._reported_delivered = delivered_total
        self._unsubscribed.clear()
        threads = self._threads
        for thread_id, seq in confirmed.items():
            thread = threads[thread_id]
            thread.reported_seq = seq
            if seq >= thread.routed_seq:
                del self._unconfirmed[thread]

    def _sweep_idle_threads(self) -> None:
        threads = self._threads
        if not threads:
            return
        assert self._clock is not None
        cutoff = self._clock.now_ms() - self._config.replay_max_age * 1000.0
        self._evicted_rings += sweep_idle_threads(threads, self._unconfirmed, cutoff, _SWEEP_PER_TICK)

    # ------------------------------------------------------------------ health

    def _scan(self) -> ConnectionScan:
        """What the connections add up to now (the busy ones are read; see :class:`DeliveryTally`)."""
        return self._tally.scan(
            self._busy,
            sent_directly=self._fan_out_sent - self._told_live,
            open_connections=len(self._connections) - self._closing,
        )

    def _sample(self, scan: ConnectionScan | None = None) -> HealthSample:
        assert self._clock is not None
        return sample_health(
            scan if scan is not None else self._scan(),
            at=self._clock.now(),
            capacity=self._capacity,
            lagging=len(self._lagging),
            tap_lost=self._tap.lost_total,
            inbox_dropped=self._inbox_dropped(),
            monitor=self._tap.monitor_ref,
            monitor_attached=self._tap.monitor is not None,
        )

    def _inbox_dropped(self) -> int:
        """Publishes (or anything else) the bridge's own mailbox refused so far."""
        if self._self is None:
            return 0
        # Read off the mailbox (same-package shortcut, as for the monitor's queue): statistics() builds two structs,
        # and the tick needs this one figure.
        mailbox = self._self._mailbox
        return mailbox.dropped_newest + mailbox.dropped_oldest + mailbox.rejected

    def _evaluate_health(self, *, record: bool, scan: ConnectionScan | None = None) -> ComponentHealth:
        """Judge the health now; tell every observer when it changed (the first judgement only if not healthy).

        :param scan: the connections, scanned now (None: scan them here)
        """
        assert self._clock is not None
        sample = self._sample(scan)
        if record:
            self._health_window.record(sample)
        health = self._health_window.judge(sample, self._clock.now_ms())
        if not health.same_state(self._health):
            if self._health is not None or health.status is not HealthStatus.HEALTHY:
                broadcast_health(self._wiring.observers, self._config.component_id, health)
            self._health = health
        return health

    # ------------------------------------------------------------------ queries

    def _connection_statistics(self, connection_id: str | None) -> tuple[ConnectionStatistics, ...]:
        if connection_id is None:
            return tuple(statistics_of(c) for c in self._connections.values())
        connection = self._connections.get(connection_id)
        if connection is not None:
            return (statistics_of(connection),)
        return self._closed.last_of(connection_id)

    def _replay_snapshot(self) -> list[StampedEvent]:
        # The very objects the rings hold, oldest first per thread: what a restarted monitor rebuilds from.
        assert self._clock is not None
        now_ms = self._clock.now_ms()
        snapshot = [item for thread in self._threads.values() for item in thread.ring.snapshot(now_ms)]
        # A (re)starting monitor knows none of the confirmations its predecessor got, nor those made while it was
        # detached (none are reported then): every routed thread's delivery is reported again, now, so that the
        # report is in its mailbox before the tick on which it judges the replayed events' delivery deadlines.
        # Otherwise a thread with no new traffic would never be confirmed, and its delivered events would be
        # reported undelivered.
        for thread in self._threads.values():
            if thread.routed_seq:
                thread.reported_seq = 0
                self._unconfirmed[thread] = None
        monitor = self._tap.refresh()
        if monitor is not None and self._unconfirmed:
            self._report_delivery(monitor, self._scan(), resync=True)
        return snapshot

    def _metrics(self, scan: ConnectionScan | None = None) -> BridgeMetrics:
        """The bridge's counters now.

        :param scan: the connections, scanned now (None: scan them here)
        """
        # O(busy connections), like the tick: one scan brings the running totals up to date (DeliveryTally), and
        # the rest is kept as it changes (the shared latency histogram, the rings' evictions, the route counts).
        # Summing every connection's and every ring's counters instead cost ~1.9 ms per call with 1,000
        # connections, and the bridge's loop waited for it on every audit and every /metrics scrape.
        if scan is None:
            scan = self._scan()
        closed = self._closed
        dropped = {
            reason: count
            for reason, count in (
                ("invalid_event", self._invalid),
                ("inbox_full", self._inbox_dropped()),
                ("discarded_on_close", scan.discarded + closed.left_queued),
                ("deferred_on_close", self._deferred_on_close),
                ("monitor_tap", self._tap.lost_total),
            )
            if count
        }
        accepted = self._received - self._invalid
        evictions = self._ring_evictions
        evicted = evictions.by_count + evictions.by_age + self._evicted_rings
        latency = LatencyHistogram()
        latency.merge(self._latency)
        latency.record_zeros(scan.sent_directly)  # a frame the bridge sent itself went out as it was accepted
        return BridgeMetrics(
            events_received=self._received,
            events_accepted=accepted,
            events_routed=accepted - self._unrouted,
            events_unrouted=self._unrouted,
            fan_out_total=self._fan_out_total,
            fan_out_sent=self._fan_out_sent,
            events_deferred=self._deferred,
            events_caught_up=self._caught_up,
            deferred_pending=self._deferred_pending,
            events_replayed=self._replayed,
            events_delivered=scan.delivered,
            events_coalesced=scan.coalesced,
            dropped=dropped,
            connections_open=scan.open,
            connections_opened=self._opened,
            connections_lagging=len(self._lagging),
            connections_closed={str(code): n for code, n in sorted(closed.by_code.items())},
            subscriptions=self._subscriptions,
            subscriptions_refused=self._refused,
            resumes=self._resumes,
            resume_gaps=self._resume_gaps,
            slow_consumer_closes=closed.slow_closes,
            send_errors=scan.errors,
            queued=scan.queued + scan.closing_queued,
            max_queue_depth=max(scan.fullest, scan.closing_fullest),
            threads=len(self._threads),
            # Every accepted event went into its thread's ring once, and leaves it only by an eviction.
            replay_retained=accepted - evicted,
            replay_evicted=evicted,
            latency_p50_ms=latency.quantile(0.5),
            latency_p99_ms=latency.quantile(0.99),
            latency_samples=latency.count,
            latency_counts=tuple(latency.counts),
            monitor_attached=self._tap.monitor is not None,
            taps=self._tap.taps,
            taps_shed=self._tap.shed,
        )


async def _wait_stopped(writers: list[ActorRef[Any]]) -> None:
    while any(writer.is_alive for writer in writers):  # noqa: ASYNC110  # writers signal only by stopping
        await anyio.sleep(_SHUTDOWN_POLL)
