from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import anyio

from actors import Actor, ActorRef, ExitReason, Message
from actors.process import MessageSchema, parent_ref, worker_factory

# Actors built in worker processes by the process-isolation tests (a worker imports this module by name, so it
# stays light: no pytest, no test module).


class Add(Message, frozen=True, kw_only=True):
    value: int


class Total(Message, frozen=True, kw_only=True):
    pass


class Boom(Message, frozen=True, kw_only=True):
    pass


class AskParent(Message, frozen=True, kw_only=True):
    """Make the worker's actor ask the parent's journal a Question and reply with the answer."""

    n: int
    timeout: float = 5.0


class Introduce(Message, frozen=True, kw_only=True):
    """Make the worker's actor send its own ref up: the parent answers it with a Greeting."""


class Remember(Message, frozen=True, kw_only=True):
    """A parent ref crossing down: the worker's actor tells it a Report of its total."""

    ref: ActorRef[Any]


class Greeting(Message, frozen=True, kw_only=True):
    text: str


class Greeted(Message, frozen=True, kw_only=True):
    pass


# -- up the link (worker -> parent) --


class Report(Message, frozen=True, kw_only=True):
    pid: int
    total: int


class Question(Message, frozen=True, kw_only=True):
    n: int


class Hello(Message, frozen=True, kw_only=True):
    pid: int
    ref: ActorRef[Any]


class Lifecycle(Message, frozen=True, kw_only=True):
    pid: int
    event: str  # started | stopped
    detail: str = ""


COUNTER_SCHEMA = MessageSchema(
    accepts=(Add, Total, Boom, AskParent, Introduce, Remember, Greeting, Greeted),
    replies={Total: int, Boom: int, AskParent: list[int], Greeted: str},
    sends=(Report, Question, Hello, Lifecycle),
    send_replies={Question: list[int]},
)


class Counter(Actor[Any]):
    """Counts what it is told, reports each total to the parent's journal, answers asks, talks back up."""

    def __init__(self, start: int, journal: str, stop_delay: float, ignore_sigterm: bool) -> None:
        self.total = start
        self.journal = parent_ref(journal)
        self.stop_delay = stop_delay
        self.ignore_sigterm = ignore_sigterm
        self.greeting = ""

    async def on_start(self) -> None:
        if self.ignore_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.journal.tell(Lifecycle(pid=os.getpid(), event="started"))

    async def on_stop(self, reason: ExitReason) -> None:
        if self.stop_delay:
            time.sleep(self.stop_delay)  # noqa: ASYNC251  # a worker that will not stop in time
        self.journal.tell(Lifecycle(pid=os.getpid(), event="stopped", detail=reason.kind.value))

    async def receive(self, message: Any) -> Any:
        match message:
            case Add(value=value):
                self.total += value
                self.journal.tell(Report(pid=os.getpid(), total=self.total))
            case Total():
                return self.total
            case Boom():
                raise RuntimeError("boom in the worker")
            case AskParent(n=n, timeout=timeout):
                answer: list[int] = await self.journal.ask(Question(n=n), timeout=timeout)
                return answer
            case Introduce():
                self.journal.tell(Hello(pid=os.getpid(), ref=self.ref))
            case Remember(ref=ref):
                ref.tell(Report(pid=os.getpid(), total=self.total))
            case Greeting(text=text):
                self.greeting = text
            case Greeted():
                return self.greeting
        return None


@worker_factory(COUNTER_SCHEMA)
def build_counter(start: int, journal: str, stop_delay: float = 0.0, ignore_sigterm: bool = False) -> Counter:
    """A Counter for a worker process."""
    return Counter(start, journal, stop_delay, ignore_sigterm)


class Refuses(Actor[Any]):
    async def on_start(self) -> None:
        raise ValueError("refusing to start")

    async def receive(self, message: Any) -> None:
        return None


@worker_factory(COUNTER_SCHEMA)
def build_refusing(marker: str) -> Refuses:
    """An actor whose on_start raises; ``marker`` names a file it touches first (proof that a worker ran)."""
    Path(marker).touch()
    return Refuses()


class Journal(Actor[Any]):
    """The parent-side actor the workers talk to: keeps what they tell it, answers their questions."""

    def __init__(self) -> None:
        self.got: list[Any] = []
        self.changed = anyio.Event()

    async def receive(self, message: Any) -> Any:
        if isinstance(message, Question):
            if message.n < 0:
                await anyio.sleep(1.0)  # answers too late for an asker with a shorter timeout
                return []
            return list(range(message.n))
        if message == "got":
            return list(self.got)
        self.got.append(message)
        if isinstance(message, Hello):
            message.ref.tell(Greeting(text=f"hello {message.pid}"))
        self.changed.set()
        self.changed = anyio.Event()
        return None
