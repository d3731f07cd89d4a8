from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any, Final, cast

import anyio
import msgspec

from actors._exceptions import ActorError, ActorFailed, ActorNotFound, ActorStopped, AskTimeout, MailboxFull

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import ByteReceiveStream

# A frame is a 4-byte big-endian length, then one MessagePack value: the Init struct (the first frame the parent
# sends) or a batch, an array of items. An item is an array whose first element says what it is; messages travel
# in it as the encoded value of their own type, decoded on the other side by the type the schema gives its code.
LENGTH: Final = 4
#: A larger length means a corrupt stream (or a runaway reply): the link is treated as broken.
MAX_FRAME: Final = 256 * 1024 * 1024
#: Bytes asked of the stream per read.
READ_SIZE: Final = 256 * 1024

# MessagePack extension codes: an ActorRef crosses the boundary as the name of an actor in the parent system, or as
# "the actor behind this link" (the worker's own actor, seen from the parent as its host's ref, and back).
EXT_PARENT_REF: Final = 1
EXT_LINKED_REF: Final = 2


class Init(msgspec.Struct, frozen=True, kw_only=True):
    """The first frame the parent sends: what to build in the worker and how to run it."""

    target: str
    args: bytes
    name: str
    heartbeat_interval: float
    handler_timeout: float | None
    mailbox_capacity: int
    #: The parent's runtime clock minus the wall clock (ms): the worker's clock reads the same ``now_ms()``.
    clock_offset_ms: int


# -- parent -> worker items --------------------------------------------------------------------------------------


class Ask(msgspec.Struct, frozen=True, array_like=True, tag=1):
    code: int
    body: msgspec.Raw
    ask_id: int


class Answer(msgspec.Struct, frozen=True, array_like=True, tag=2):
    """The parent's reply to an :class:`AskUp`."""

    ask_id: int
    ok: bool
    body: msgspec.Raw


class Stop(msgspec.Struct, frozen=True, array_like=True, tag=3):
    timeout: float


class Fault(msgspec.Struct, frozen=True, array_like=True, tag=4):
    kind: str
    seconds: float
    exit_code: int


class AnswerPart(msgspec.Struct, frozen=True, array_like=True, tag=5):
    """A slice of a long list answer, sent ahead of the :class:`Answer` that carries the last slice."""

    ask_id: int
    body: msgspec.Raw


class TellRun(msgspec.Struct, frozen=True, array_like=True, tag=6):
    """Messages of one type told in a row: ``body`` is the list of them (for a type with a WireForm, its columns)."""

    code: int
    body: msgspec.Raw


DownItem = Ask | Answer | Stop | Fault | AnswerPart | TellRun

# -- worker -> parent items --------------------------------------------------------------------------------------


class Ready(msgspec.Struct, frozen=True, array_like=True, tag=10):
    pid: int


class StartFailed(msgspec.Struct, frozen=True, array_like=True, tag=11):
    detail: str


class Reply(msgspec.Struct, frozen=True, array_like=True, tag=12):
    """The worker's reply to an :class:`Ask`."""

    ask_id: int
    ok: bool
    body: msgspec.Raw


class TellUp(msgspec.Struct, frozen=True, array_like=True, tag=13):
    target: str
    code: int
    body: msgspec.Raw


class AskUp(msgspec.Struct, frozen=True, array_like=True, tag=14):
    ask_id: int
    target: str
    code: int
    body: msgspec.Raw
    timeout: float | None


class Heartbeat(msgspec.Struct, frozen=True, array_like=True, tag=15):
    pass


class Exited(msgspec.Struct, frozen=True, array_like=True, tag=16):
    kind: str
    detail: str


UpItem = Ready | StartFailed | Reply | TellUp | AskUp | Heartbeat | Exited

# The encoding side builds plain tuples laid out exactly as the structs above (tag first): a tuple is cheaper to
# build than a struct, and it carries the message object itself, which the encoder writes in place.
# TELL names one told message inside the parent's host (what an unencodable message of a run is dead-lettered
# as); tells cross the link only in runs (TELL_RUN), so no wire item carries its tag.
TELL, ASK, ANSWER, STOP, FAULT, ANSWER_PART, TELL_RUN = 0, 1, 2, 3, 4, 5, 6
READY, START_FAILED, REPLY, TELL_UP, ASK_UP, HEARTBEAT, EXITED = 10, 11, 12, 13, 14, 15, 16

DOWN_BATCH: Final = msgspec.msgpack.Decoder(list[DownItem])
UP_BATCH: Final = msgspec.msgpack.Decoder(list[UpItem])
INIT: Final = msgspec.msgpack.Decoder(Init)


class Failure(msgspec.Struct, frozen=True, array_like=True):
    """Why an ask across the boundary failed; rebuilt as the matching :class:`ActorError` on the asking side."""

    kind: str  # failed | stopped | timeout | not_found | full | unencodable
    actor: str
    error_type: str
    message: str
    traceback: str = ""


FAILURE: Final = msgspec.msgpack.Decoder(Failure)


class RemoteError(ActorError):
    """An exception raised in the other process, rebuilt from its type name, message and traceback.

    It is the ``cause`` of the :class:`ActorFailed` an asker gets when a handler in a worker raised.
    """

    def __init__(self, error_type: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{error_type}: {message}" if message else error_type)
        self.error_type = error_type
        self.remote_message = message
        self.remote_traceback = remote_traceback


def failure_of(exc: BaseException, actor: str) -> Failure:
    """Describe an exception raised while serving an ask, for the asker in the other process."""
    cause: BaseException = exc
    kind = "failed"
    if isinstance(exc, ActorFailed):
        cause = exc.cause
    elif isinstance(exc, ActorStopped):
        kind = "stopped"
    elif isinstance(exc, AskTimeout):
        kind = "timeout"
    elif isinstance(exc, ActorNotFound):
        kind = "not_found"
    elif isinstance(exc, MailboxFull):
        kind = "full"
    elif isinstance(exc, TypeError | msgspec.EncodeError):
        kind = "unencodable"
    return Failure(
        kind=kind,
        actor=actor,
        error_type=type(cause).__qualname__,
        message=str(cause) if kind == "failed" else str(exc),
        traceback="".join(traceback.format_exception(cause)) if kind in ("failed", "unencodable") else "",
    )


def error_from(failure: Failure, timeout: float | None) -> ActorError:
    """Rebuild, on the asking side, the error the other side reported (see :func:`failure_of`)."""
    match failure.kind:
        case "stopped":
            return ActorStopped(failure.actor, "stopped")
        case "timeout":
            return AskTimeout(failure.actor, timeout if timeout is not None else 0.0)
        case "not_found":
            return ActorNotFound(failure.actor)
        case "full":
            return MailboxFull(failure.actor, 0, "drop")
        case _:
            remote = RemoteError(failure.error_type, failure.message, failure.traceback)
            error = ActorFailed(failure.actor, remote)
            error.__cause__ = remote
            return error


def frame(items: Any, encoder: msgspec.msgpack.Encoder) -> bytes:
    """Encode one frame: the length prefix, then ``items`` in MessagePack, in one buffer (no copy of the body).

    The buffer is a fresh ``bytearray``, never written again once returned: the streams take any bytes-like object,
    and copying it into ``bytes`` would cost a pass over every frame.
    """
    buffer = bytearray(LENGTH)
    encoder.encode_into(items, buffer, LENGTH)
    buffer[:LENGTH] = (len(buffer) - LENGTH).to_bytes(LENGTH, "big")
    return cast("bytes", buffer)


class FrameReader:
    """Splits a byte stream into frame bodies (each one ``bytes``: decoded values may keep views into it)."""

    __slots__ = ("_buffer", "_stream")

    def __init__(self, stream: ByteReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def receive(self) -> list[bytes]:
        """Wait for at least one complete frame and return every complete frame received so far.

        :raises anyio.EndOfStream: when the other side closed the stream (a partial frame is dropped)
        :raises ValueError: when a length prefix exceeds ``MAX_FRAME`` (a corrupt stream)
        """
        buffer = self._buffer
        while True:
            frames = self._split()
            if frames:
                return frames
            buffer += await self._stream.receive(READ_SIZE)

    def _split(self) -> list[bytes]:
        buffer = self._buffer
        frames: list[bytes] = []
        position = 0
        available = len(buffer)
        while available - position >= LENGTH:
            size = int.from_bytes(buffer[position : position + LENGTH], "big")
            if size > MAX_FRAME:
                raise ValueError(f"frame length {size} exceeds the limit of {MAX_FRAME} bytes: corrupt stream")
            end = position + LENGTH + size
            if end > available:
                break
            frames.append(bytes(buffer[position + LENGTH : end]))
            position = end
        if position:
            del buffer[:position]
        return frames


class Signal:
    """A resettable wake-up for one waiting task (anyio.Event cannot be cleared)."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def set(self) -> None:
        """Wake the waiter, if one waits."""
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    async def wait(self) -> None:
        """Sleep until the next :meth:`set`."""
        event = self._event
        if event is None:
            event = self._event = anyio.Event()
        await event.wait()


def typed_decoder(
    tp: Any, *, ext_hook: Callable[[int, memoryview], Any], dec_hook: Callable[[type, Any], Any]
) -> msgspec.msgpack.Decoder[Any]:
    """A MessagePack decoder of ``tp`` that resolves refs with the given hooks."""
    return msgspec.msgpack.Decoder(tp, ext_hook=ext_hook, dec_hook=dec_hook)
