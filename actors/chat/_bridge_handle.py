from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Final

from actors._mailbox import MailboxSpec, Overflow
from actors._ref import ActorRef
from actors.chat._aliases import agent_completed, agent_started, agent_thinking, tool_completed, tool_executing
from actors.chat._bridge import AgentWebSocketBridge, BridgeWiring
from actors.chat._bridge_messages import (
    AttachMonitor,
    BridgeConfig,
    BridgeMessage,
    BridgeMetrics,
    Connect,
    ConnectionStatistics,
    Disconnect,
    GetConnectionStatistics,
    GetHealth,
    GetHealthAndMetrics,
    GetMetrics,
    Publish,
    RegisterObserver,
    Subscribe,
    SubscribeResult,
    Unsubscribe,
)
from actors.chat._connection import Close, CloseCode, ConnectionProgress, ConnectionSink, ConnectionWriter
from actors.chat._events import EVENT_CLASSES, AgentEvent, StampedEvent, ToolCallResult
from actors.chat._health import ComponentHealth, HealthObserver, HealthObserverProxy
from actors.chat._tap import ReplaySnapshot

if TYPE_CHECKING:
    from actors._system import ActorSystem

_EVENT_TYPES: Final = frozenset(EVENT_CLASSES.values())

BRIDGE_MAILBOX: Final = MailboxSpec(capacity=65_536, overflow=Overflow.DROP_NEWEST)
"""The bridge's recommended mailbox: large, and drop-newest so that a flood can never fail its tick timer; every
refused Publish is counted (``dropped["inbox_full"]``) and makes the bridge unhealthy."""

_connection_ids = itertools.count(1)
_observer_ids = itertools.count(1)


def _require_id(name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty str, got {value!r}")


class BridgeHandle:
    """The seed's API on a running bridge: publishing from agent code, connections, health and metrics.

    It only wraps the bridge's ref (sync methods ``tell``, async ones ``ask``) and spawns connection writers, so any
    number of tasks may share one handle. Make one with :func:`spawn_bridge`, or around a supervised bridge's ref.

    :param ref: the bridge's ref
    :param system: the actor system it runs in (connection writers are spawned there)
    :param config: the bridge's config (writers are built from it)
    """

    __slots__ = ("_config", "_ref", "_system", "_tell")

    def __init__(self, ref: ActorRef[BridgeMessage], system: ActorSystem, config: BridgeConfig | None = None) -> None:
        self._ref = ref
        self._tell = ref.tell  # bound once: publish is called once per event
        self._system = system
        self._config = config if config is not None else BridgeConfig()

    @property
    def ref(self) -> ActorRef[BridgeMessage]:
        """The bridge's ref."""
        return self._ref

    @property
    def config(self) -> BridgeConfig:
        """The bridge's config."""
        return self._config

    # ------------------------------------------------------------------ publishing

    def publish(self, thread_id: str, run_id: str, event: AgentEvent) -> None:
        """Hand an event to the bridge without waiting; it is numbered, kept for replay and routed in order.

        :raises TypeError: when ``event`` is not an AG-UI event or an id is not a non-empty str
        :raises MailboxFull: when the bridge's mailbox is full and its policy is REJECT
        """
        # Once per event on the critical path: one test for the usual arguments, the full checks only otherwise.
        if type(thread_id) is not str or type(run_id) is not str or not thread_id or not run_id:
            _require_id("thread_id", thread_id)
            _require_id("run_id", run_id)
        if type(event) not in _EVENT_TYPES:
            raise TypeError(
                f"event must be an AG-UI event (RunStarted, ToolCallStart, ...), got {type(event).__name__}"
            )
        self._tell(Publish(thread_id=thread_id, run_id=run_id, event=event))

    def _now_ms(self) -> int:
        return self._system.clock.now_ms()

    def notify_agent_started(self, thread_id: str, run_id: str, *, metadata: dict[str, Any] | None = None) -> None:
        """Publish the seed's ``agent_started`` (RUN_STARTED)."""
        self.publish(thread_id, run_id, agent_started(thread_id, run_id, timestamp=self._now_ms(), metadata=metadata))

    def notify_agent_thinking(
        self,
        thread_id: str,
        run_id: str,
        *,
        message_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Publish the seed's ``agent_thinking`` (REASONING_START; ``message_id`` defaults to ``{run_id}:thinking``)."""
        event = agent_thinking(thread_id, run_id, message_id=message_id, timestamp=self._now_ms(), metadata=metadata)
        self.publish(thread_id, run_id, event)

    def notify_tool_executing(
        self,
        thread_id: str,
        run_id: str,
        tool_call_id: str,
        tool_name: str,
        *,
        parent_message_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Publish the seed's ``tool_executing`` (TOOL_CALL_START)."""
        event = tool_executing(
            tool_call_id,
            tool_name,
            thread_id=thread_id,
            run_id=run_id,
            parent_message_id=parent_message_id,
            timestamp=self._now_ms(),
            metadata=metadata,
        )
        self.publish(thread_id, run_id, event)

    def notify_tool_completed(
        self,
        thread_id: str,
        run_id: str,
        tool_call_id: str,
        *,
        result: str | None = None,
        result_message_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Publish the seed's ``tool_completed``: TOOL_CALL_END, then TOOL_CALL_RESULT when there is a result.

        :param result: what the tool returned, as text (AG-UI tool messages carry a string)
        :param result_message_id: the id of the tool message the result creates (default ``{tool_call_id}:result``)
        """
        now = self._now_ms()
        self.publish(
            thread_id,
            run_id,
            tool_completed(tool_call_id, thread_id=thread_id, run_id=run_id, timestamp=now, metadata=metadata),
        )
        if result is not None:
            if not isinstance(result, str):
                raise TypeError(f"result must be a str (the tool message's content), got {type(result).__name__}")
            message_id = result_message_id if result_message_id is not None else f"{tool_call_id}:result"
            self.publish(
                thread_id,
                run_id,
                ToolCallResult(
                    message_id=message_id,
                    tool_call_id=tool_call_id,
                    content=result,
                    role="tool",
                    timestamp=now,
                    metadata={**(metadata or {}), "threadId": thread_id, "runId": run_id},
                ),
            )

    def notify_agent_completed(
        self, thread_id: str, run_id: str, *, result: Any = None, metadata: dict[str, Any] | None = None
    ) -> None:
        """Publish the seed's ``agent_completed`` (RUN_FINISHED)."""
        event = agent_completed(thread_id, run_id, result=result, timestamp=self._now_ms(), metadata=metadata)
        self.publish(thread_id, run_id, event)

    # ------------------------------------------------------------------ connections

    async def connect(self, sink: ConnectionSink, *, principal: str, connection_id: str | None = None) -> str:
        """Start a writer for ``sink`` and register the connection under the authenticated ``principal``.

        :param connection_id: an id of your choosing (default: a fresh ``conn-N``)
        :return: the connection id, for :meth:`subscribe` and :meth:`disconnect`
        :raises ValueError: when ``connection_id`` is already in use
        :raises ActorStopped: when the bridge is not running (the writer is closed again with 1001)
        """
        _require_id("principal", principal)
        if connection_id is None:
            connection_id = f"conn-{next(_connection_ids)}"
        _require_id("connection_id", connection_id)
        config = self._config
        progress = ConnectionProgress()
        ref = self._ref

        def writer() -> ConnectionWriter:
            return ConnectionWriter(
                connection_id,
                sink,
                progress,
                queue_capacity=config.writer_queue_capacity,
                coalesce_at=config.coalesce_at,
                send_deadline=config.slow_consumer_after,
                close_timeout=config.close_timeout,
                frame_kind=config.frame_kind,
                bridge=ref,
            )

        # Room for the bridge's bound plus one Flush and one Close; REJECT makes any accounting slip loud.
        mailbox = MailboxSpec(capacity=config.writer_queue_capacity + 2, overflow=Overflow.REJECT)
        writer_ref = self._system.spawn(writer, name=f"{ref.name}/{connection_id}", mailbox=mailbox)
        try:
            registered = await ref.ask(
                Connect(connection_id=connection_id, writer=writer_ref, principal=principal, progress=progress)
            )
        except BaseException:
            writer_ref.tell_control(Close(code=CloseCode.GOING_AWAY, reason="bridge unavailable"))
            raise
        if not registered:
            writer_ref.tell_control(Close(code=CloseCode.POLICY_VIOLATION, reason="duplicate connection id"))
            raise ValueError(f"connection_id {connection_id!r} is already in use")
        return connection_id

    async def subscribe(self, connection_id: str, thread_id: str, *, after_seq: int | None = None) -> SubscribeResult:
        """Join a thread; with ``after_seq`` (the last seq the client saw) first get every event after it.

        Refused by the authorisation hook: the connection is closed with 1008. ``after_seq`` too old for the replay
        ring: closed with 4002.
        """
        _require_id("thread_id", thread_id)
        if after_seq is not None and (isinstance(after_seq, bool) or not isinstance(after_seq, int) or after_seq < 0):
            raise ValueError(f"after_seq must be an int >= 0 or None, got {after_seq!r}")
        result: SubscribeResult = await self._ref.ask(
            Subscribe(connection_id=connection_id, thread_id=thread_id, after_seq=after_seq)
        )
        return result

    def unsubscribe(self, connection_id: str, thread_id: str) -> None:
        """Leave a thread (without waiting)."""
        self._ref.tell(Unsubscribe(connection_id=connection_id, thread_id=thread_id))

    def disconnect(self, connection_id: str, *, code: int = CloseCode.NORMAL, reason: str = "normal closure") -> None:
        """Close a connection without waiting (safe in a WebSocket handler's ``finally``); unknown ids are ignored."""
        self._ref.tell_control(Disconnect(connection_id=connection_id, code=code, reason=reason))

    # ------------------------------------------------------------------ monitoring

    def attach_monitor(self, monitor: ActorRef[Any] | None) -> None:
        """Tap every accepted event to ``monitor`` from now on (``None`` detaches)."""
        self._ref.tell_control(AttachMonitor(monitor=monitor))

    def register_monitor_observer(self, observer: ActorRef[Any] | HealthObserver) -> None:
        """Have ``observer`` told of every health change (the seed's method; it does not wait).

        An ActorRef is told ``ComponentHealthChanged`` (``actors.chat._components``); an object's
        ``on_component_health_change(component_id, health)`` is called, with a :class:`ComponentHealth`, from a
        proxy actor of its own, so that it can neither block nor fail the bridge.

        :raises TypeError: when ``observer`` is neither
        """
        if isinstance(observer, ActorRef):
            ref: ActorRef[Any] = observer
        elif isinstance(observer, HealthObserver):
            target = observer
            ref = self._system.spawn(
                lambda: HealthObserverProxy(target),
                name=f"{self._ref.name}/observer-{next(_observer_ids)}",
                mailbox=MailboxSpec(capacity=64, overflow=Overflow.DROP_OLDEST),
            )
        else:
            raise TypeError(
                f"observer must be an ActorRef or have on_component_health_change(), got {type(observer).__name__}"
            )
        # Past the bound: a registration must not be lost to a flooded mailbox (there are a handful at most).
        self._ref.tell_control(RegisterObserver(observer=ref))

    async def get_health_status(self) -> ComponentHealth:
        """The bridge's health now: healthy, degraded or unhealthy, with a reason per failing check."""
        health: ComponentHealth = await self._ref.ask(GetHealth())
        return health

    async def get_metrics(self) -> BridgeMetrics:
        """The bridge's counters and delivery latency."""
        metrics: BridgeMetrics = await self._ref.ask(GetMetrics())
        return metrics

    async def get_health_and_metrics(self, *, timeout: float | None = 5.0) -> tuple[ComponentHealth, BridgeMetrics]:
        """:meth:`get_health_status` and :meth:`get_metrics` as of the same moment, in one round trip: what the
        monitor's audit reads (see ``MonitorableComponent``).

        :param timeout: seconds to wait for the bridge (None: forever)
        :raises AskTimeout: (a TimeoutError) when the bridge did not answer within ``timeout``
        """
        both: tuple[ComponentHealth, BridgeMetrics] = await self._ref.ask(GetHealthAndMetrics(), timeout=timeout)
        return both

    async def connection_statistics(self, connection_id: str | None = None) -> tuple[ConnectionStatistics, ...]:
        """Counters of one connection (open or among the recently closed), or of every open one."""
        stats: tuple[ConnectionStatistics, ...] = await self._ref.ask(
            GetConnectionStatistics(connection_id=connection_id)
        )
        return stats

    async def replay_snapshot(self, thread_id: str | None = None) -> list[StampedEvent]:
        """Every event the replay rings hold (one thread's, or all), oldest first per thread."""
        items: list[StampedEvent] = await self._ref.ask(ReplaySnapshot())
        return items if thread_id is None else [item for item in items if item.thread_id == thread_id]


def spawn_bridge(
    system: ActorSystem,
    config: BridgeConfig | None = None,
    *,
    name: str = "bridge",
    mailbox: MailboxSpec = BRIDGE_MAILBOX,
) -> BridgeHandle:
    """Start an unsupervised bridge and return its handle (a supervisor builds ``AgentWebSocketBridge(config,
    wiring)`` with one :class:`BridgeWiring` per ref instead).

    :raises ActorNameTaken: when ``name`` is in use
    """
    config = config if config is not None else BridgeConfig()
    wiring = BridgeWiring()
    ref: ActorRef[BridgeMessage] = system.spawn(
        lambda: AgentWebSocketBridge(config, wiring), name=name, mailbox=mailbox
    )
    return BridgeHandle(ref, system, config)
