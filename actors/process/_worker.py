from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Final, assert_never

import anyio
import anyio.abc
import msgspec

from actors._exceptions import ActorError, ActorStartError, ActorStopped, AskTimeout
from actors._mailbox import MailboxSpec, Overflow
from actors._message import ExitKind, ExitReason
from actors._ref import ActorRef, ActorStatistics, AskRequest, RefState
from actors._system import ActorSystem, open_actor_system

from . import _wire as wire
from ._recipe import argument_types, decode_args, resolve_target
from ._tell_runs import RunReader

if TYPE_CHECKING:
    from ._recipe import MessageSchema

logger = logging.getLogger("agentwatch.process")

#: Exit statuses of a worker: its actor stopped normally or was stopped; it failed; it failed to start; the link
#: to the parent was unusable (a protocol error).
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_START_FAILED: Final = 3
EXIT_PROTOCOL: Final = 4
#: Messages the actor may tell the parent that are not yet written; beyond it a tell is dropped (and counted), as a
#: full mailbox would drop it.
UP_LIMIT: Final = 10_000
_PROXY_MAILBOX: Final = MailboxSpec(capacity=1)

_link: WorkerLink | None = None


def parent_ref(name: str) -> ActorRef[Any]:
    """A ref to the actor registered as ``name`` in the parent's actor system, usable from a worker process.

    ``tell`` goes up the link without waiting (dropped and counted when too much is waiting to be written);
    ``ask`` waits for the parent actor's reply, decoded as the schema's ``send_replies`` type. Message types must be
    in the factory's schema ``sends``.

    :raises RuntimeError: outside an actor built in a worker process
    """
    if _link is None:
        raise RuntimeError("parent_ref() is only available in a worker process, while building or running its actor")
    return _link.parent_ref(name)


class ParentRef(ActorRef[Any]):
    """Stands in a worker for an actor of the parent system: tells and asks travel up the link by name."""

    __slots__ = ("_link", "_up_dropped")

    def __init__(self, link: WorkerLink, name: str) -> None:
        super().__init__(link.system, name, _PROXY_MAILBOX)
        self._link = link
        self._state = RefState.RUNNING
        self._up_dropped = 0

    def __repr__(self) -> str:
        return f"<ParentRef {self._name}>"

    def tell(self, message: Any) -> None:
        """Send ``message`` to the parent actor without waiting.

        :raises TypeError: when its type is not in the schema's ``sends``
        """
        self._mailbox.sent += 1
        if not self._link.tell_up(self._name, message):
            self._up_dropped += 1
            self._mailbox.dropped_newest += 1

    def tell_control(self, message: Any) -> None:
        self.tell(message)

    async def send(self, message: Any) -> None:
        self.tell(message)

    async def ask(self, message: Any, *, timeout: float | None = 5.0) -> Any:
        """Ask the parent actor and wait for its reply.

        :raises TypeError: when the message type is not in the schema's ``sends``
        :raises AskTimeout: when no reply came within ``timeout``
        :raises ActorStopped: when the link to the parent is closed, or the parent actor is stopped
        """
        self._mailbox.sent += 1
        return await self._link.ask_up(self._name, message, timeout)

    async def stop(self, *, timeout: float | None = 5.0) -> ExitReason:
        raise ActorError(f"{self._name!r} is an actor of the parent process: it cannot be stopped from a worker")

    def statistics(self) -> ActorStatistics:
        """Counts of what this proxy sent up (its mailbox is the parent actor's, in the other process)."""
        stats = super().statistics()
        return msgspec.structs.replace(stats, processed=stats.sent - self._up_dropped, queued=0)


class _UpAsk:
    __slots__ = ("decoder", "done", "failure", "parts", "value")

    def __init__(self, decoder: msgspec.msgpack.Decoder[Any]) -> None:
        self.decoder = decoder
        self.done = anyio.Event()
        self.failure: wire.Failure | None = None
        self.parts: list[Any] | None = None
        self.value: Any = None


class _FaultTrigger:
    """A local marker queued behind the actor's messages: the injected fault runs when the actor reaches it."""

    __slots__ = ("fault",)

    def __init__(self, fault: wire.Fault) -> None:
        self.fault = fault


class HandlerClock:
    """Wraps the worker's actor's ``receive``: times each handler, and runs injected faults inside one.

    The handler deadline (the ChildSpec's ``handler_timeout``) is kept by a watch task that reads :attr:`started`,
    instead of a cancel scope around every handler: entering and leaving one costs more than a monitor handles a
    tapped event. A handler past its deadline ends the actor (the worker then exits with that reason), as a
    ``HandlerTimeout`` would.
    """

    __slots__ = ("started",)

    def __init__(self) -> None:
        #: ``time.monotonic()`` when the running handler started, None between handlers.
        self.started: float | None = None

    def instrument(self, actor: Any) -> None:
        original = actor.receive
        clock = time.monotonic

        async def receive(message: Any) -> Any:
            self.started = clock()
            try:
                if type(message) is _FaultTrigger:
                    await _run_fault(message.fault)
                    return None
                return await original(message)
            finally:
                self.started = None

        actor.receive = receive


async def _run_fault(fault: wire.Fault) -> None:
    logger.warning("worker %d: injected fault %s", os.getpid(), fault.kind)
    match fault.kind:
        case "raise":
            raise RuntimeError("injected fault: the handler raised")
        case "hang":
            await anyio.sleep_forever()
        case "block":
            time.sleep(fault.seconds)  # noqa: ASYNC251  # the fault itself: a synchronous call in a handler
        case "spin":
            while True:  # the fault itself: a handler that never yields
                pass
        case _:
            raise ValueError(f"unknown fault kind {fault.kind!r}")


class WorkerLink:
    """The worker's end of the link: runs the actor and moves its messages to and from the parent."""

    def __init__(self, stream: anyio.abc.ByteStream, reader: wire.FrameReader, init: wire.Init) -> None:
        self.stream = stream
        self.reader = reader
        self.init = init
        factory, schema = resolve_target(init.target)
        count = len(msgspec.msgpack.decode(init.args)) if init.args else 0
        self.factory = factory
        self.args = decode_args(init.args, argument_types(factory, count, init.target))
        self.schema: MessageSchema = schema
        self.encoder = msgspec.msgpack.Encoder(enc_hook=self._enc_hook)
        hooks: dict[str, Any] = {"ext_hook": self._ext_hook, "dec_hook": _dec_hook}
        self.accepts = [wire.typed_decoder(tp, **hooks) for tp in schema.accepts]
        self.runs = RunReader(schema, **hooks)
        self.send_replies = {tp: wire.typed_decoder(reply, **hooks) for tp, reply in schema.send_replies.items()}
        self.untyped = wire.typed_decoder(Any, **hooks)
        self.outbox: list[tuple[Any, ...]] = []
        self.up_messages = 0  # tells waiting in the outbox (replies and heartbeats are not bounded)
        self.wake = wire.Signal()
        self.progress = wire.Signal()
        self.queued = 0
        self.written = 0
        self.pending: dict[int, _UpAsk] = {}
        self.ask_ids = itertools.count(1)
        self.parents: dict[str, ParentRef] = {}
        self.exited = anyio.Event()
        self.exit_code = EXIT_OK
        self.reader_closed = False
        self.handlers = HandlerClock()
        self.deadline_missed: str | None = None
        self.system: ActorSystem
        self.ref: ActorRef[Any]
        self.tasks: anyio.abc.TaskGroup

    # -- the actor's side --------------------------------------------------------------------------------------

    def parent_ref(self, name: str) -> ParentRef:
        ref = self.parents.get(name)
        if ref is None:
            ref = self.parents[name] = ParentRef(self, name)
        return ref

    def tell_up(self, target: str, message: Any) -> bool:
        code = self.schema.send_code(message)
        if code is None:
            raise TypeError(
                f"{type(message).__qualname__} is not in the schema's sends: the worker cannot send it to {target!r}"
            )
        if self.up_messages >= UP_LIMIT:
            return False
        self.up_messages += 1
        self._send((wire.TELL_UP, target, code, message))
        return True

    async def ask_up(self, target: str, message: Any, timeout: float | None) -> Any:
        code = self.schema.send_code(message)
        if code is None:
            raise TypeError(
                f"{type(message).__qualname__} is not in the schema's sends: the worker cannot ask {target!r} with it"
            )
        if self.exited.is_set():
            raise ActorStopped(target, "unreachable (the link to the parent is closed)")
        ask_id = next(self.ask_ids)
        slot = _UpAsk(self.send_replies.get(type(message), self.untyped))
        self.pending[ask_id] = slot
        self._send((wire.ASK_UP, ask_id, target, code, message, timeout))
        try:
            with anyio.move_on_after(timeout if timeout is not None else float("inf")):
                await slot.done.wait()
        finally:
            self.pending.pop(ask_id, None)
        if not slot.done.is_set():
            raise AskTimeout(target, timeout if timeout is not None else 0.0)
        if slot.failure is not None:
            raise wire.error_from(slot.failure, timeout)
        return slot.value

    def _enc_hook(self, obj: Any) -> Any:
        if isinstance(obj, ParentRef):
            return msgspec.msgpack.Ext(wire.EXT_PARENT_REF, obj.name.encode())
        if obj is self.ref:
            return msgspec.msgpack.Ext(wire.EXT_LINKED_REF, b"")
        if isinstance(obj, ActorRef):
            raise TypeError(f"a ref to {obj.name!r}, an actor local to the worker, cannot cross the process boundary")
        raise TypeError(f"{type(obj).__qualname__} is not msgspec-encodable")

    def _ext_hook(self, code: int, data: memoryview) -> Any:
        if code == wire.EXT_LINKED_REF:
            return self.ref
        if code == wire.EXT_PARENT_REF:
            return self.parent_ref(bytes(data).decode())
        raise ValueError(f"unknown MessagePack extension code {code}")

    # -- running ---------------------------------------------------------------------------------------------------

    def _send(self, item: tuple[Any, ...]) -> None:
        self.outbox.append(item)
        self.queued += 1
        self.wake.set()

    async def flush(self) -> None:
        """Wait until everything queued so far has been written (or the link broke)."""
        target = self.queued
        while self.written < target and not self.reader_closed:
            await self.progress.wait()

    async def run(self, pending_frames: list[bytes]) -> int:
        clock_epoch = int(time.time() * 1000) + self.init.clock_offset_ms
        async with open_actor_system(epoch_ms=clock_epoch) as system, anyio.create_task_group() as tasks:
            self.system = system
            self.tasks = tasks
            tasks.start_soon(self._write_loop)
            tasks.start_soon(self._heartbeat_loop)
            mailbox = MailboxSpec(capacity=self.init.mailbox_capacity, overflow=Overflow.DROP_NEWEST)
            self.ref = system.create_ref(self.factory, name=self.init.name, mailbox=mailbox)
            self.ref.add_interceptor(self.handlers)
            if self.init.handler_timeout is not None:
                tasks.start_soon(self._watch_deadline, self.init.handler_timeout)
            # The actor's on_start may ask the parent (the monitor asks for the replay snapshot): answers arrive
            # through the reader, so it runs before the actor starts.
            tasks.start_soon(self._read_loop, pending_frames)
            try:
                await system.start_incarnation(
                    self.ref,
                    lambda: self.factory(*self.args),
                    on_exit=self._on_exit,
                    handler_timeout=None,  # kept by the HandlerClock and _watch_deadline instead
                )
            except ActorStartError as exc:
                self._send((wire.START_FAILED, _describe(exc.cause)))
                self.exit_code = EXIT_START_FAILED
                self.exited.set()
            else:
                self._send((wire.READY, os.getpid()))
            await self.exited.wait()
            with anyio.move_on_after(2.0):
                await self.flush()
            tasks.cancel_scope.cancel()
        return self.exit_code

    async def _watch_deadline(self, timeout: float) -> None:
        handlers = self.handlers
        interval = min(timeout / 4, 0.25)
        while True:
            await anyio.sleep(interval)
            started = handlers.started
            if started is not None and time.monotonic() - started > timeout:
                incarnation = self.ref._incarnation
                if incarnation is not None and not incarnation.done.is_set():
                    self.deadline_missed = f"{self.init.name!r}: a handler ran past its deadline of {timeout} s"
                    incarnation.kill(self.deadline_missed)
                return

    def _on_exit(self, ref: ActorRef[Any], reason: ExitReason) -> None:
        kind = reason.kind.value
        detail = _describe(reason.exception) if reason.exception is not None else reason.detail
        if self.deadline_missed is not None:
            reason = ExitReason(kind=ExitKind.ERROR, detail=self.deadline_missed)
            kind, detail = reason.kind.value, f"HandlerTimeout: {self.deadline_missed} and was cancelled"
        self.exit_code = EXIT_OK if reason.kind in (ExitKind.NORMAL, ExitKind.SHUTDOWN) else EXIT_FAILED
        self._send((wire.EXITED, kind, detail))
        self.exited.set()

    async def _write_loop(self) -> None:
        stream = self.stream
        try:
            while True:
                while not self.outbox:
                    await self.wake.wait()
                items, self.outbox = self.outbox, []
                self.up_messages = 0
                await stream.send(encode_batch(items, self.encoder, self._unencodable))
                self.written += len(items)
                self.progress.set()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self._lost_parent()

    def _unencodable(self, item: tuple[Any, ...], exc: Exception) -> tuple[Any, ...] | None:
        if item[0] == wire.REPLY:
            return (wire.REPLY, item[1], False, wire.failure_of(exc, self.init.name))
        if item[0] == wire.ASK_UP:
            slot = self.pending.get(item[1])
            if slot is not None:
                slot.failure = wire.failure_of(exc, item[2])
                slot.done.set()
            return None
        logger.error("worker %d: dropped an unencodable %r: %s", os.getpid(), item[0], exc)
        return None

    async def _heartbeat_loop(self) -> None:
        interval = self.init.heartbeat_interval
        while True:
            await anyio.sleep(interval)
            self._send((wire.HEARTBEAT,))

    async def _read_loop(self, pending_frames: list[bytes]) -> None:
        try:
            for body in pending_frames:
                await self._dispatch(body)
            while True:
                for body in await self.reader.receive():
                    await self._dispatch(body)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self._lost_parent()
        except (msgspec.DecodeError, ValueError):
            logger.exception("worker %d: corrupt frame from the parent", os.getpid())
            self.exit_code = EXIT_PROTOCOL
            self._lost_parent()

    def _lost_parent(self) -> None:
        # The parent closed the link (it stopped us, or it died): nobody is left to report to.
        self.reader_closed = True
        self.progress.set()
        if not self.exited.is_set():
            self.exited.set()

    async def _dispatch(self, body: bytes) -> None:
        ref = self.ref
        tell = ref.tell
        queue = ref._mailbox.queue
        limit = ref._mailbox.limit  # its capacity: no reserved lane
        for item in wire.DOWN_BATCH.decode(body):
            if type(item) is wire.TellRun:  # the hot path: runs of tells, each message a plain local tell
                messages, errors = self.runs.read(item.code, item.body)
                for error in errors:
                    logger.error("worker %d: dropped a message that does not decode: %s", os.getpid(), error)
                if len(queue) + len(messages) <= limit:
                    ref.tell_many(messages)
                    continue
                for message in messages:
                    if len(queue) < limit:
                        tell(message)
                    else:
                        # Backpressure: the link stops being read, so the parent's host stops writing, and the
                        # messages wait (or drop) in its bounded mailbox, where the senders can see it.
                        with contextlib.suppress(ActorStopped):
                            await ref.send(message)
                continue
            match item:
                case wire.Ask():
                    await self._ask_actor(item)
                case wire.Answer():
                    self._answer(item)
                case wire.AnswerPart():
                    self._answer_part(item)
                case wire.Stop():
                    self.tasks.start_soon(self._stop_actor, item.timeout)
                case wire.Fault():
                    if item.kind == "exit":
                        os._exit(item.exit_code)
                    await ref.send(_FaultTrigger(item))
                case wire.TellRun():
                    pass  # handled above
                case _:
                    assert_never(item)

    async def _ask_actor(self, item: wire.Ask) -> None:
        try:
            message = self.accepts[item.code].decode(item.body)
        except (msgspec.DecodeError, IndexError) as exc:
            self._send((wire.REPLY, item.ask_id, False, wire.failure_of(exc, self.init.name)))
            return
        request = AskRequest(message)
        try:
            await self.ref.send(request)
        except ActorStopped as exc:
            self._send((wire.REPLY, item.ask_id, False, wire.failure_of(exc, self.init.name)))
            return
        self.tasks.start_soon(self._reply_when_answered, item.ask_id, request)

    async def _reply_when_answered(self, ask_id: int, request: AskRequest) -> None:
        await request.done.wait()
        if request.error is not None:
            self._send((wire.REPLY, ask_id, False, wire.failure_of(request.error, self.init.name)))
        else:
            self._send((wire.REPLY, ask_id, True, request.reply))

    def _answer(self, item: wire.Answer) -> None:
        slot = self.pending.get(item.ask_id)
        if slot is None:
            return  # the ask timed out meanwhile: a late answer is dropped, as a local late reply is
        if slot.failure is None:
            try:
                if not item.ok:
                    slot.failure = wire.FAILURE.decode(item.body)
                else:
                    value = slot.decoder.decode(item.body)
                    if slot.parts is not None:
                        slot.parts.extend(value)
                        value = slot.parts
                    slot.value = value
            except msgspec.DecodeError as exc:
                slot.failure = wire.failure_of(exc, "parent")
        slot.done.set()

    def _answer_part(self, item: wire.AnswerPart) -> None:
        slot = self.pending.get(item.ask_id)
        if slot is None or slot.failure is not None:
            return
        try:
            part = slot.decoder.decode(item.body)
        except msgspec.DecodeError as exc:
            slot.failure = wire.failure_of(exc, "parent")
            return
        if slot.parts is None:
            slot.parts = []
        slot.parts.extend(part)

    async def _stop_actor(self, timeout: float) -> None:
        with contextlib.suppress(ActorError):
            await self.ref.stop(timeout=timeout)
        if not self.exited.is_set():
            self.exited.set()


def _dec_hook(tp: Any, obj: Any) -> Any:
    if isinstance(obj, ActorRef):
        return obj
    raise NotImplementedError(f"cannot decode {tp!r} from {type(obj).__name__}")


def _describe(exc: object) -> str:
    return repr(exc)


def encode_batch(
    items: list[tuple[Any, ...]],
    encoder: msgspec.msgpack.Encoder,
    unencodable: Any,
) -> bytes:
    """One frame of ``items``; an item that does not encode is replaced (or dropped) by ``unencodable(item, exc)``."""
    try:
        return wire.frame(items, encoder)
    except (TypeError, msgspec.EncodeError, ValueError, OverflowError):
        pass
    # The slow path: find the culprits one by one and frame the items that do encode.
    encoded: list[msgspec.Raw] = []
    for item in items:
        try:
            encoded.append(msgspec.Raw(encoder.encode(item)))
        except (TypeError, msgspec.EncodeError, ValueError, OverflowError) as exc:
            replacement = unencodable(item, exc)
            if replacement is not None:
                encoded.append(msgspec.Raw(encoder.encode(replacement)))
    return wire.frame(encoded, encoder)


def _die_with_parent(parent: int) -> None:
    """Make sure this worker never outlives its parent, even while its event loop is stuck."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: the kernel kills us when the parent dies
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(EXIT_OK)  # the parent died before we got here

    def watch() -> None:
        # Portable fallback (and a second line on Linux): a thread gets the GIL even while the loop spins.
        while True:
            time.sleep(0.25)
            if os.getppid() != parent:
                os._exit(EXIT_OK)

    threading.Thread(target=watch, name="agentwatch-parent-watch", daemon=True).start()


async def _serve(sock: socket.socket) -> int:
    global _link
    stream = await anyio.abc.SocketStream.from_socket(sock)
    reader = wire.FrameReader(stream)
    try:
        frames = await reader.receive()
    except anyio.EndOfStream:
        return EXIT_OK
    init = wire.INIT.decode(frames[0])
    link = _link = WorkerLink(stream, reader, init)
    try:
        return await link.run(frames[1:])
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()


def lower_priority(nice: int, scheduling: str) -> None:
    """Lower this process's CPU priority before it does anything else: ``nice`` levels, and SCHED_IDLE if asked.

    SCHED_IDLE, not just nice 19: Linux preempts a SCHED_IDLE task at once for any other task that wakes up on its
    CPU, and may place a waking task on a CPU that runs only SCHED_IDLE ones as on an idle one; a nice-19 task gets
    neither treatment, only a smaller share of the CPU.
    """
    if nice:
        os.nice(nice)
    if scheduling != "idle":
        return
    policy = getattr(os, "SCHED_IDLE", None)
    if policy is not None:
        try:
            os.sched_setscheduler(0, policy, os.sched_param(0))
        except OSError as exc:  # a seccomp filter, say: the lowest nice is the next best thing
            logger.debug("no SCHED_IDLE (%s): nice 19 instead", exc)
        else:
            return
    with contextlib.suppress(OSError):
        os.nice(19 - os.nice(0))


def run_worker(argv: list[str] | None = None) -> int:
    """The worker's entry point: ``python -m actors.process <socket fd> <backend> <parent pid> <nice> <scheduling>``.

    :return: the exit status (see ``EXIT_*``)
    """
    fd_text, backend, parent_text, nice_text, scheduling = argv if argv is not None else sys.argv[1:]
    _die_with_parent(int(parent_text))
    lower_priority(int(nice_text), scheduling)
    # Frames travel on the socket; stray prints of the actor must not reach the parent's stdout (a bench's JSON).
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING, format=f"worker {os.getpid()} %(name)s %(levelname)s: %(message)s")
    sock = socket.socket(fileno=int(fd_text))
    code: int = anyio.run(_serve, sock, backend=backend)
    return code
