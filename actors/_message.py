from __future__ import annotations

import enum
from typing import Any

import msgspec

from ._ref import ActorRef


class Message(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    """Base for actor messages: immutable, so one object can be handed to several actors without copying."""


class ExitKind(enum.Enum):
    """Why an actor incarnation ended."""

    #: The actor stopped itself (``self.stop()``) after finishing its work.
    NORMAL = "normal"
    #: It was asked to stop from outside and did so gracefully (``on_stop`` ran).
    SHUTDOWN = "shutdown"
    #: ``receive``/``on_start`` raised, or a handler exceeded its deadline.
    ERROR = "error"
    #: It was cancelled: a brutal stop, or a graceful stop that outlived its timeout.
    KILLED = "killed"


class ExitReason(msgspec.Struct, frozen=True, kw_only=True):
    """How and why an actor incarnation ended.

    ``exception`` is kept for logs and supervisors; it never crosses a process boundary (``detail`` does).
    """

    kind: ExitKind
    detail: str = ""
    exception: BaseException | None = None

    @property
    def is_error(self) -> bool:
        """True for an abnormal exit that a transient child is restarted after."""
        return self.kind is ExitKind.ERROR or self.kind is ExitKind.KILLED

    @classmethod
    def error(cls, exc: BaseException, detail: str | None = None) -> ExitReason:
        """Build an ERROR reason from an exception.

        :param exc: the exception that ended the incarnation
        :param detail: a summary to use instead of ``repr(exc)``
        """
        return cls(kind=ExitKind.ERROR, detail=detail if detail is not None else repr(exc), exception=exc)

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.detail}" if self.detail else self.kind.value


NORMAL_EXIT = ExitReason(kind=ExitKind.NORMAL)
SHUTDOWN_EXIT = ExitReason(kind=ExitKind.SHUTDOWN)


class Terminated(Message, frozen=True, kw_only=True):
    """Delivered to a watcher when the watched actor is stopped for good (never for a restart)."""

    ref: ActorRef[Any]
    reason: ExitReason
