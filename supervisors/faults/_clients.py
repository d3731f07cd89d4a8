from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Final

import anyio
import msgspec

from actors.chat._connection import CloseCode, MemorySink, SinkClosed
from actors.chat._events import LIFECYCLE_EVENT_TYPES, decode_event

if TYPE_CHECKING:
    from actors.chat._bridge_handle import BridgeHandle
    from actors.chat._bridge_messages import SubscribeResult

    from ._history import FaultHistory

#: Close codes after which a client resumes with afterSeq (docs/bridge.md, "Close codes").
RESUMABLE_CLOSES: Final = frozenset(
    {CloseCode.GOING_AWAY, CloseCode.INTERNAL_ERROR, CloseCode.SERVICE_RESTART, CloseCode.SLOW_CONSUMER}
)

_client_ids = itertools.count(1)


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One frame a client received.

    :param at: loop time of the completed send (virtual in tests)
    :param seq: the frame's ``metadata.seq``
    :param first_seq: ``metadata.firstSeq`` for a frame of coalesced deltas, else ``seq``: the frame covers
        ``first_seq..seq``
    :param type: the AG-UI event type (``RUN_FINISHED``, ...)
    :param lifecycle: whether it is a lifecycle event (never coalesced, never dropped)
    """

    at: float
    client: str
    connection_id: str
    thread_id: str
    run_id: str
    seq: int
    first_seq: int
    type: str
    lifecycle: bool


class ClientClose(msgspec.Struct, frozen=True, kw_only=True):
    """A connection of a client closed by the server, with its close code."""

    at: float
    client: str
    connection_id: str
    code: int
    reason: str


class DeliveryLog:
    """Everything one logical client received, across all its connections, in arrival order.

    ``starts`` holds, per thread, the seq the client's first subscription started after: the client is owed every
    seq after it. Checkers (:func:`~supervisors.faults.check_delivery`) read logs, never the bridge's own counters.
    """

    def __init__(self, client: str) -> None:
        self.client = client
        self.deliveries: list[Delivery] = []
        self.closes: list[ClientClose] = []
        self.starts: dict[str, int] = {}
        self._last: dict[str, int] = {}

    def record(self, delivery: Delivery) -> None:
        """Append one delivery."""
        self.deliveries.append(delivery)
        if delivery.seq > self._last.get(delivery.thread_id, 0):
            self._last[delivery.thread_id] = delivery.seq

    def last_seq(self, thread_id: str) -> int | None:
        """The highest seq received on ``thread_id``, or None before the first frame."""
        return self._last.get(thread_id)

    def threads(self) -> list[str]:
        """Every thread the client subscribed to or received from, sorted."""
        return sorted(set(self.starts) | set(self._last))

    def covered(self, thread_id: str) -> list[int]:
        """Every seq of ``thread_id`` the received frames cover, in arrival order (coalesced frames expanded)."""
        covered: list[int] = []
        for delivery in self.deliveries:
            if delivery.thread_id == thread_id:
                covered.extend(range(delivery.first_seq, delivery.seq + 1))
        return covered

    def times(self) -> dict[tuple[str, int], float]:
        """When each (thread, seq) arrived (for a coalesced frame, every seq it covers arrived with it)."""
        times: dict[tuple[str, int], float] = {}
        for delivery in self.deliveries:
            for seq in range(delivery.first_seq, delivery.seq + 1):
                times.setdefault((delivery.thread_id, seq), delivery.at)
        return times


class ClientSink(MemorySink):
    """A :class:`~actors.chat.MemorySink` that records each frame it accepts into a :class:`DeliveryLog`, and can
    read slowly (for a while) or vanish.

    :param log: where deliveries and closes are recorded
    :param connection_id: the connection this sink serves
    :param rate: read at most this many frames per second (None: as fast as they come)
    :param history: where the faults done to the sink and their effects (closes) are recorded
    :param keep_frames: also keep the raw frames (``MemorySink.frames``)
    """

    def __init__(
        self,
        log: DeliveryLog,
        connection_id: str,
        *,
        rate: float | None = None,
        history: FaultHistory | None = None,
        keep_frames: bool = False,
    ) -> None:
        super().__init__(keep_frames=keep_frames)
        self.log = log
        self.connection_id = connection_id
        self.history = history
        self.vanished = False
        self._slow_until: float | None = None
        if rate is not None:
            self.read_slowly(rate)

    @property
    def target(self) -> str:
        """The name this sink goes by in the history: ``client/connection``."""
        return f"{self.log.client}/{self.connection_id}"

    def read_slowly(self, rate: float, *, duration: float | None = None) -> None:
        """Read at most ``rate`` frames per second, for ``duration`` seconds (None: until :meth:`read_normally`).

        :raises ValueError: when ``rate`` or ``duration`` is not > 0
        """
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
            raise ValueError(f"rate must be > 0 frames per second, got {rate!r}")
        if duration is not None and not (isinstance(duration, int | float) and duration > 0):
            raise ValueError(f"duration must be > 0 seconds or None, got {duration!r}")
        self.delay = 1.0 / rate
        self._slow_until = None if duration is None else anyio.current_time() + duration
        if self.history is not None:
            bound = "" if duration is None else f" for {duration} s"
            self.history.record(self.target, "slow_reader", "inject", f"{rate:g} frames/s{bound}")

    def read_normally(self) -> None:
        """Read at full speed again."""
        if self.delay > 0 and self.history is not None:
            self.history.record(self.target, "slow_reader", "revert")
        self.delay = 0.0
        self._slow_until = None

    def vanish(self) -> None:
        """The client is gone without a close handshake: every later send raises :class:`SinkClosed`, and a send
        in progress is not received."""
        self.vanished = True
        self.fail_after = self.sent
        if self.history is not None:
            self.history.record(self.target, "abrupt_disconnect", "trigger", f"after {self.sent} frames")

    async def send_text(self, data: str) -> None:
        """Receive one text frame (at the reading rate) and record it."""
        self._expire_slowness()
        await super().send_text(data)
        self._received(data)

    async def send_bytes(self, data: bytes) -> None:
        """Receive one binary frame (at the reading rate) and record it."""
        self._expire_slowness()
        await super().send_bytes(data)
        self._received(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Record the server's close (once), in the log and as an effect in the history."""
        first = self.close_code is None
        await super().close(code, reason)
        if first and not self.vanished:
            self.log.closes.append(
                ClientClose(
                    at=anyio.current_time(),
                    client=self.log.client,
                    connection_id=self.connection_id,
                    code=code,
                    reason=reason,
                )
            )
            if self.history is not None:
                self.history.record(self.target, "connection", "effect", f"closed {code} {reason}".rstrip())

    def _expire_slowness(self) -> None:
        until = self._slow_until
        if until is not None and anyio.current_time() >= until:
            self.read_normally()

    def _received(self, data: str | bytes) -> None:
        if self.vanished:
            # The frame was in flight when the client vanished: it never arrived.
            raise SinkClosed("the client vanished")
        event = decode_event(data)
        metadata = event.metadata or {}
        seq = metadata["seq"]
        kind = event.__struct_config__.tag  # the AG-UI "type" (the tagged union's tag)
        self.log.record(
            Delivery(
                at=anyio.current_time(),
                client=self.log.client,
                connection_id=self.connection_id,
                thread_id=metadata["threadId"],
                run_id=metadata["runId"],
                seq=seq,
                first_seq=metadata.get("firstSeq", seq),
                type=str(kind),
                lifecycle=type(event) in LIFECYCLE_EVENT_TYPES,
            )
        )


class BridgeClient:
    """One logical chat client of a bridge: connects, subscribes, suffers client-side faults and resumes.

    Its :class:`DeliveryLog` spans every connection it makes, so a checker can verify that a client which was slow,
    closed with 4001, or dropped, and then resumed with ``afterSeq``, lost nothing and got nothing twice.

    :param bridge: the bridge's handle
    :param principal: who the client authenticates as
    :param name: the client's name in the log and the history (default ``client-N``)
    :param history: where its faults and their effects go
    """

    def __init__(
        self, bridge: BridgeHandle, *, principal: str, name: str | None = None, history: FaultHistory | None = None
    ) -> None:
        self.bridge = bridge
        self.principal = principal
        self.name = name if name is not None else f"client-{next(_client_ids)}"
        self.history = history
        self.log = DeliveryLog(self.name)
        self.sink: ClientSink | None = None
        self.connection_id: str | None = None
        self.connections = 0
        self._threads: list[str] = []

    @property
    def close_code(self) -> int | None:
        """The current connection's close code (None while it is open)."""
        return None if self.sink is None else self.sink.close_code

    async def connect(self, *, rate: float | None = None) -> str:
        """Open a new connection (the previous one, if any, is left to the server); return its id."""
        self.connections += 1
        connection_id = f"{self.name}-c{self.connections}"
        sink = ClientSink(self.log, connection_id, rate=rate, history=self.history)
        self.sink = sink
        self.connection_id = await self.bridge.connect(sink, principal=self.principal, connection_id=connection_id)
        return self.connection_id

    async def subscribe(self, thread_id: str) -> SubscribeResult:
        """Join ``thread_id`` live (the client is owed every event after the thread's current last seq)."""
        connection_id = self._require_connection()
        result = await self.bridge.subscribe(connection_id, thread_id)
        if thread_id not in self.log.starts:
            self.log.starts[thread_id] = result.last_seq
            self._threads.append(thread_id)
        return result

    def resume_point(self, thread_id: str) -> int:
        """The afterSeq a resume asks for: the last seq received, or where the first subscription started."""
        last = self.log.last_seq(thread_id)
        start = self.log.starts.get(thread_id, 0)
        return start if last is None or last < start else last

    def read_slowly(self, rate: float, *, duration: float | None = None) -> None:
        """Make the current connection read at ``rate`` frames per second (for ``duration`` seconds)."""
        self._require_sink().read_slowly(rate, duration=duration)

    def drop(self, *, notify: bool = True) -> None:
        """Abrupt disconnect: the client vanishes mid-stream; frames in flight are lost to it.

        :param notify: tell the bridge, as a front end does when its transport reports the disconnect; without it
            the server only notices at its next send (which fails: 1011)
        """
        sink = self._require_sink()
        sink.vanish()
        if notify and self.connection_id is not None:
            self.bridge.disconnect(self.connection_id)

    async def resume(self, *, rate: float | None = None) -> dict[str, SubscribeResult]:
        """Reconnect and re-subscribe to every thread with ``after_seq`` = the last seq seen (lossless resume).

        :return: the subscribe result per thread (``replay_gap`` means the ring no longer reaches back that far)
        """
        resume_points = {thread_id: self.resume_point(thread_id) for thread_id in self._threads}
        connection_id = await self.connect(rate=rate)
        results: dict[str, SubscribeResult] = {}
        for thread_id, after_seq in resume_points.items():
            results[thread_id] = await self.bridge.subscribe(connection_id, thread_id, after_seq=after_seq)
        if self.history is not None:
            points = ", ".join(f"{thread}>{seq}" for thread, seq in resume_points.items())
            outcomes = ", ".join(sorted({result.outcome.value for result in results.values()}))
            self.history.record(self.name, "resume", "effect", f"{connection_id} after {points}: {outcomes}")
        return results

    async def wait_closed(self, *, timeout: float = 10.0) -> int | None:
        """Wait until the server closes the current connection; return its close code (None on timeout)."""
        sink = self._require_sink()
        with anyio.move_on_after(timeout):
            while sink.close_code is None:  # noqa: ASYNC110  # the close is written by another actor
                await anyio.sleep(0.001)
        return sink.close_code

    def _require_sink(self) -> ClientSink:
        if self.sink is None:
            raise RuntimeError(f"client {self.name} is not connected: call connect() first")
        return self.sink

    def _require_connection(self) -> str:
        if self.connection_id is None:
            raise RuntimeError(f"client {self.name} is not connected: call connect() first")
        return self.connection_id
