"""Errors raised by the actor runtime.

::

    ActorError
    ├── MailboxFull          a tell/send hit a full mailbox whose overflow policy is REJECT
    ├── AskTimeout           an ask got no reply in time (also a TimeoutError)
    ├── ActorStopped         the target is stopped or detached: nothing will ever handle the message
    ├── ActorFailed          the handler raised while answering an ask (the cause is ``__cause__``)
    ├── ActorStartError      building the instance or its ``on_start`` raised
    ├── ActorNameTaken       a live actor already holds that name (also a ValueError)
    └── ActorNotFound        no live actor holds that name (also a LookupError)
"""

from __future__ import annotations


class ActorError(Exception):
    """Root of every error the actor runtime raises."""


class MailboxFull(ActorError):
    """A full mailbox refused a message: a tell under ``Overflow.REJECT``, or an ask whose request was dropped."""

    def __init__(self, actor: str, capacity: int, policy: str = "reject") -> None:
        super().__init__(f"mailbox of {actor!r} is full (capacity {capacity}, overflow policy {policy})")
        self.actor = actor
        self.capacity = capacity
        self.policy = policy


class AskTimeout(ActorError, TimeoutError):
    """An ask got no reply within its timeout; a reply arriving later is dropped and counted."""

    def __init__(self, actor: str, timeout: float) -> None:
        super().__init__(f"{actor!r} did not reply within {timeout} s")
        self.actor = actor
        self.timeout = timeout


class ActorStopped(ActorError):
    """The target actor is stopped (or detached), so the message can never be handled."""

    def __init__(self, actor: str, state: str) -> None:
        super().__init__(f"{actor!r} is {state}")
        self.actor = actor
        self.state = state


class ActorFailed(ActorError):
    """The handler raised while answering an ask; the original exception is ``__cause__`` and ``cause``."""

    def __init__(self, actor: str, cause: BaseException) -> None:
        super().__init__(f"{actor!r} failed while handling the request: {cause!r}")
        self.actor = actor
        self.cause = cause


class ActorStartError(ActorError):
    """Building an actor instance or running its ``on_start`` raised."""

    def __init__(self, actor: str, cause: object) -> None:
        super().__init__(f"{actor!r} failed to start: {cause!r}")
        self.actor = actor
        self.cause = cause


class ActorNameTaken(ActorError, ValueError):
    """A live actor is already registered under that name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"an actor named {name!r} is already running")
        self.name = name


class ActorNotFound(ActorError, LookupError):
    """No live actor is registered under that name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no actor named {name!r}")
        self.name = name
