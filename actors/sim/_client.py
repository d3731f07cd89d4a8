from __future__ import annotations

import hashlib
import logging
import random
from typing import TYPE_CHECKING, Any, Final, assert_never

import anyio
import msgspec

from actors._actor import Actor
from actors._exceptions import ActorError
from actors._message import Message
from actors.chat._bridge_messages import SubscribeOutcome
from actors.chat._connection import CloseCode
from actors.chat._health import LatencyHistogram

if TYPE_CHECKING:
    from actors._clock import Clock
    from actors._ref import ActorRef
    from actors.chat._bridge_handle import BridgeHandle
    from actors.sim._plan import ClientPlan

logger = logging.getLogger("agentwatch.sim.client")

#: Seconds a client waits before reconnecting after the server closed its connection, plus a seeded jitter of up to
#: :data:`RECONNECT_JITTER` (clients that reconnect in lockstep with the server's ticks would make the order of
#: same-instant events, which differs between event loops, decide what a resume replays).
RECONNECT_AFTER: Final = 0.5
RECONNECT_JITTER: Final = 0.05
#: Gap details kept per client (the counts are always complete).
_DETAILS_KEPT: Final = 10


class _FrameMeta(msgspec.Struct, frozen=True):
    seq: int
    thread_id: str = msgspec.field(name="threadId")
    first_seq: int | None = msgspec.field(default=None, name="firstSeq")


class _FrameHead(msgspec.Struct, frozen=True):
    # Only what the client checks; msgspec skips every other field of the event without building it.
    metadata: _FrameMeta
    timestamp: int | None = None
    type: str = ""


_decode_head: Final = msgspec.json.Decoder(_FrameHead).decode


# ---------------------------------------------------------------------------------------------------- messages


class _Frame(Message, frozen=True, kw_only=True):
    connection: int
    data: str | bytes
    received_at: int


class _Closed(Message, frozen=True, kw_only=True):
    connection: int
    code: int
    reason: str


class _Reconnect(Message, frozen=True, kw_only=True):
    pass


class _Leave(Message, frozen=True, kw_only=True):
    offline_for: float


class _BreakSocket(Message, frozen=True, kw_only=True):
    pass


class _ReadDelay(Message, frozen=True, kw_only=True):
    delay: float
    start: bool


class FinishClient(Message, frozen=True, kw_only=True):
    """Tell a SimulatedClient the simulation is ending: it stops reconnecting (a 1001 at shutdown is expected)."""


class GetClientReport(Message, frozen=True, kw_only=True):
    """Ask a SimulatedClient for its receipts; the reply is a :class:`ClientReport` covering every frame its sockets
    handed over before the ask."""


ClientMessage = _Frame | _Closed | _Reconnect | _Leave | _BreakSocket | _ReadDelay | FinishClient | GetClientReport


# ---------------------------------------------------------------------------------------------------- the socket


class ClientSocket:
    """The :class:`ConnectionSink` of one connection of a simulated client: the client's end of a WebSocket.

    It reads at the client's current speed (about ``read_delay`` seconds per frame, awaited, so a slow reader holds up
    only its own connection's writer), hands each frame to the client actor (waiting for room, like a socket
    buffer), and tells the client when the server closes. Armed with :meth:`fail_next_send`, its next send raises,
    as a connection that broke under the server would.
    """

    def __init__(
        self, client: ActorRef[Any], number: int, clock: Clock, read_delay: float = 0.0, *, seed: str = ""
    ) -> None:
        self._client = client
        self._number = number
        self._clock = clock
        self.read_delay = read_delay
        # Each read takes read_delay +-20%: a slow reader is no metronome (and one in step with the bridge's tick
        # would make what happens depend on the order of same-instant events, which differs between event loops).
        self._rng = random.Random(f"{seed}:socket:{number}")
        self._fail_next = False
        self.closed = False

    def fail_next_send(self) -> None:
        """Make the next send raise ``ConnectionResetError``."""
        self._fail_next = True

    async def send_text(self, data: str) -> None:
        """Read one text frame."""
        await self._read(data)

    async def send_bytes(self, data: bytes) -> None:
        """Read one binary frame."""
        await self._read(data)

    async def _read(self, data: str | bytes) -> None:
        if self._fail_next:
            self._fail_next = False
            raise ConnectionResetError("simulated connection failure")
        if self.read_delay > 0:
            await anyio.sleep(self.read_delay * self._rng.uniform(0.8, 1.2))
        await self._client.send(_Frame(connection=self._number, data=data, received_at=self._clock.now_ms()))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """The server closed the connection: tell the client (past its mailbox bound: a close is never lost)."""
        if not self.closed:
            self.closed = True
            self._client.tell_control(_Closed(connection=self._number, code=code, reason=reason))


# ---------------------------------------------------------------------------------------------------- receipts


class ThreadReceipts(msgspec.Struct, kw_only=True, rename="camel"):
    """What one client received on one thread, checked for order, gaps and duplicates.

    :param base_seq: the thread's last seq when the client first subscribed (it is owed every seq after it)
    :param last_seq: the highest seq received with nothing missing before it (what it resumes after)
    :param events: events covered by the frames (a coalesced frame covers ``firstSeq..seq``)
    :param missing: seqs skipped (a gap), counted once each
    :param duplicates: frames that repeated a seq already received
    :param last_type: the AG-UI ``type`` of the last frame received (a run's terminal event is ``RUN_FINISHED`` or
        ``RUN_ERROR``)
    """

    thread_id: str
    base_seq: int
    last_seq: int
    frames: int = 0
    events: int = 0
    missing: int = 0
    duplicates: int = 0
    last_type: str = ""


class ClientReport(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One simulated client's receipts and connection history.

    :param closes: server-side closes by code (``1000`` includes the client's own disconnects)
    :param resumes: subscriptions resumed with ``afterSeq``; ``resume_gaps``: resumes refused with 4002
    :param anomalies: the first few gaps and duplicates, in words
    :param faults: the plan's faults actually applied (a disconnect planned while offline is skipped)
    :param latency_p50_ms: receipt time minus the event's own ``timestamp``, per frame (``latency_buckets`` are the
        counts of a :class:`LatencyHistogram`, to merge clients)
    :param digest: a hash of every frame received (connection, bytes, receipt ms) and every close (connection,
        code, ms), in order: two clients with the same digest received the same delivery sequence
    :param last_frame_at: runtime-clock ms of the last frame received (None: none)
    :param last_close: ``(code, ms)`` of the last close of one of its connections (None: never closed)
    """

    client_id: str
    connections: int
    connected: bool
    frames: int
    events: int
    missing: int
    duplicates: int
    resumes: int
    resume_gaps: int
    closes: dict[str, int]
    threads: tuple[ThreadReceipts, ...]
    anomalies: tuple[str, ...]
    faults: dict[str, int]
    latency_samples: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: int
    latency_buckets: tuple[int, ...]
    digest: str = ""
    last_frame_at: int | None = None
    last_close: tuple[int, int] | None = None


# ---------------------------------------------------------------------------------------------------- the actor


class SimulatedClient(Actor[ClientMessage]):
    """A chat client: connects to the bridge, follows its threads, checks every frame, and resumes after a drop.

    Every frame is checked against the thread's last seq: the next one is expected (a coalesced frame's
    ``firstSeq`` must follow on), a lower one is a duplicate, a higher one leaves a gap. When the server closes the
    connection (slow consumer 4001, failed send 1011, bridge restart 1012, ...) the client reconnects after
    :data:`RECONNECT_AFTER` (jittered) and resumes every thread with ``afterSeq`` = its last seq. Its plan's faults are
    applied on its own timers: slow reading windows, disconnects (then a resume) and a broken socket.

    :param plan: threads and faults
    :param bridge: the bridge to connect to
    :param start: loop time (seconds) of the simulation's t = 0
    """

    def __init__(self, plan: ClientPlan, bridge: BridgeHandle, start: float) -> None:
        self.plan = plan
        self._bridge = bridge
        self._start = start
        self._number = 0
        self._connection_id: str | None = None
        self._socket: ClientSocket | None = None
        self._connected = False
        self._leaving: float | None = None
        self._finishing = False
        self._read_delays: list[float] = []
        self._threads: dict[str, ThreadReceipts] = {}
        self._fresh: set[str] = set()  # threads to subscribe afresh (after a 4002), not resume
        self._closes: dict[str, int] = {}
        self._resumes = 0
        self._resume_gaps = 0
        self._anomalies: list[str] = []
        self._latency = LatencyHistogram()
        self._faults: dict[str, int] = {}
        self._rng = random.Random(f"{plan.seed}:client:{plan.client_id}")
        self._digest = hashlib.blake2b(digest_size=16)
        self._last_frame_at: int | None = None
        self._last_close: tuple[int, int] | None = None

    async def on_start(self) -> None:
        plan = self.plan
        for window in plan.slow:
            self.send_after(self._delay(window.at), _ReadDelay(delay=window.delay, start=True))
            self.send_after(self._delay(window.until), _ReadDelay(delay=window.delay, start=False))
        for outage in plan.outages:
            self.send_after(self._delay(outage.at), _Leave(offline_for=outage.offline_for))
        for at in plan.send_failures:
            self.send_after(self._delay(at), _BreakSocket())
        await self._connect()

    def _delay(self, at: float) -> float:
        return max(0.0, self._start + at - self.clock.now())

    async def receive(self, message: ClientMessage) -> ClientReport | None:
        match message:
            case _Frame():
                if message.connection == self._number:
                    data = message.data
                    self._digest.update(
                        f"{message.connection}:{message.received_at}:".encode()
                        + (data.encode() if isinstance(data, str) else data)
                    )
                    self._last_frame_at = message.received_at
                    self._on_frame(data, message.received_at)
            case _Closed():
                self._on_closed(message)
            case _Reconnect():
                if not self._connected and not self._finishing:
                    await self._connect()
            case _Leave(offline_for=offline_for):
                if self._connected and self._connection_id is not None and self._leaving is None:
                    # Leave as a browser tab does; the close arrives as _Closed(1000), then the client comes back.
                    self._leaving = offline_for
                    self._applied("client_disconnect")
                    self._bridge.disconnect(self._connection_id, code=CloseCode.NORMAL, reason="client left")
            case _BreakSocket():
                if self._socket is not None and self._connected:
                    self._socket.fail_next_send()
                    self._applied("bridge_connection_errors")
            case _ReadDelay(delay=delay, start=start):
                if start:
                    self._read_delays.append(delay)
                    self._applied("slow_client")
                elif delay in self._read_delays:
                    self._read_delays.remove(delay)
                if self._socket is not None:
                    self._socket.read_delay = max(self._read_delays, default=0.0)
            case FinishClient():
                self._finishing = True
            case GetClientReport():
                return self._report()
            case _:
                assert_never(message)
        return None

    # -- connections ----------------------------------------------------------------------------------------------

    async def _connect(self) -> None:
        self._number += 1
        connection_id = f"{self.plan.client_id}#{self._number}"
        socket = ClientSocket(
            self.ref,
            self._number,
            self.clock,
            max(self._read_delays, default=0.0),
            seed=f"{self.plan.seed}:{self.plan.client_id}",
        )
        try:
            await self._bridge.connect(socket, principal=self.plan.client_id, connection_id=connection_id)
        except (ActorError, TimeoutError) as exc:
            logger.info("client %s: connect failed (%s); retrying", self.plan.client_id, exc)
            self.send_after(self._reconnect_delay(), _Reconnect())
            return
        self._connection_id = connection_id
        self._socket = socket
        self._connected = True
        for thread_id in self.plan.threads:
            if not await self._subscribe(connection_id, thread_id):
                return  # the connection was closed under us: its _Closed brings us back

    async def _subscribe(self, connection_id: str, thread_id: str) -> bool:
        receipts = self._threads.get(thread_id)
        resume = receipts is not None and thread_id not in self._fresh
        after = receipts.last_seq if receipts is not None and resume else None
        try:
            result = await self._bridge.subscribe(connection_id, thread_id, after_seq=after)
        except (ActorError, TimeoutError) as exc:
            logger.info("client %s: subscribe to %s failed (%s)", self.plan.client_id, thread_id, exc)
            return False
        outcome = result.outcome
        if outcome is SubscribeOutcome.SUBSCRIBED or outcome is SubscribeOutcome.ALREADY_SUBSCRIBED:
            if receipts is None:
                self._threads[thread_id] = ThreadReceipts(
                    thread_id=thread_id, base_seq=result.last_seq, last_seq=result.last_seq
                )
            elif resume:
                self._resumes += 1
            else:
                # Subscribed afresh after a replay gap: what lies between is lost to this client.
                self._fresh.discard(thread_id)
                self._gap(receipts, receipts.last_seq + 1, result.last_seq + 1)
                receipts.last_seq = max(receipts.last_seq, result.last_seq)
            return True
        if outcome is SubscribeOutcome.REPLAY_GAP:
            self._resume_gaps += 1
            self._fresh.add(thread_id)
        return False  # refused (1008), replay gap (4002) or already closed: the connection is gone

    def _on_closed(self, message: _Closed) -> None:
        if message.connection != self._number:
            return
        code = str(message.code)
        self._closes[code] = self._closes.get(code, 0) + 1
        now = self.clock.now_ms()
        self._digest.update(f"close:{message.connection}:{code}:{now}".encode())
        self._last_close = (message.code, now)
        self._connected = False
        self._socket = None
        if self._finishing or message.code == CloseCode.POLICY_VIOLATION:
            return
        offline, self._leaving = self._leaving, None
        self.send_after(offline if offline is not None else self._reconnect_delay(), _Reconnect())

    def _reconnect_delay(self) -> float:
        return RECONNECT_AFTER + self._rng.uniform(0.0, RECONNECT_JITTER)

    # -- receipts -------------------------------------------------------------------------------------------------

    def _on_frame(self, data: str | bytes, received_at: int) -> None:
        head = _decode_head(data)
        meta = head.metadata
        receipts = self._threads.get(meta.thread_id)
        if receipts is None:
            self._note(f"frame for thread {meta.thread_id!r}, which it never subscribed to")
            return
        seq = meta.seq
        first = meta.first_seq if meta.first_seq is not None else seq
        receipts.frames += 1
        receipts.events += seq - first + 1
        receipts.last_type = head.type
        if head.timestamp is not None:
            self._latency.record(received_at - head.timestamp)
        last = receipts.last_seq
        if first == last + 1:
            receipts.last_seq = seq
        elif first <= last:
            receipts.duplicates += 1
            self._note(f"{meta.thread_id}: seq {first}..{seq} again after {last}")
            receipts.last_seq = max(last, seq)
        else:
            self._gap(receipts, last + 1, first)
            receipts.last_seq = seq

    def _gap(self, receipts: ThreadReceipts, expected: int, got: int) -> None:
        if got > expected:
            receipts.missing += got - expected
            self._note(f"{receipts.thread_id}: expected seq {expected}, got {got}")

    def _applied(self, fault: str) -> None:
        self._faults[fault] = self._faults.get(fault, 0) + 1

    def _note(self, anomaly: str) -> None:
        if len(self._anomalies) < _DETAILS_KEPT:
            self._anomalies.append(anomaly)

    def _report(self) -> ClientReport:
        threads = tuple(msgspec.structs.replace(receipts) for receipts in self._threads.values())
        latency = self._latency
        return ClientReport(
            client_id=self.plan.client_id,
            connections=self._number,
            connected=self._connected,
            frames=sum(receipts.frames for receipts in threads),
            events=sum(receipts.events for receipts in threads),
            missing=sum(receipts.missing for receipts in threads),
            duplicates=sum(receipts.duplicates for receipts in threads),
            resumes=self._resumes,
            resume_gaps=self._resume_gaps,
            closes=dict(sorted(self._closes.items())),
            threads=threads,
            anomalies=tuple(self._anomalies),
            faults=dict(sorted(self._faults.items())),
            latency_samples=latency.count,
            latency_p50_ms=latency.quantile(0.5),
            latency_p99_ms=latency.quantile(0.99),
            latency_max_ms=latency.max_value,
            latency_buckets=tuple(latency.counts),
            digest=self._digest.hexdigest(),
            last_frame_at=self._last_frame_at,
            last_close=self._last_close,
        )
