from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._history import FaultHistory


class InjectedFault(RuntimeError):
    """Raised by an injected crash: recognisable in logs, exit reasons and tests."""


class Fault:
    """Base of the receive-wrapping faults. Subclasses decide, per message, whether and how to misbehave."""

    name = "fault"

    def __init__(self) -> None:
        self._target = ""
        self._history: FaultHistory | None = None
        self._injection = 0

    def bind(self, target: str, history: FaultHistory, injection: int = 0) -> None:
        """Attach the fault to the history its triggers go to (done by :func:`inject`)."""
        self._target = target
        self._history = history
        self._injection = injection

    def _triggered(self, detail: str = "") -> None:
        if self._history is not None:
            self._history.record(self._target, self.name, "trigger", detail, injection=self._injection)

    def describe(self) -> str:
        """A short description for the history."""
        return self.name

    # -- the Interceptor protocol (see actors.Interceptor) --------------------------------------------------------

    def instrument(self, actor: Any) -> None:
        """Wrap the instance's ``receive`` with :meth:`around` (called for every new instance behind the ref)."""
        inner: Callable[[Any], Awaitable[Any]] = actor.receive
        fault = self

        async def receive(message: Any) -> Any:
            return await _in_handler(actor, fault, inner, message)

        actor.receive = receive

    async def around(self, receive: Callable[[Any], Awaitable[Any]], message: Any) -> Any:
        """Handle one message, misbehaving when the fault says so; by default pass it through."""
        return await receive(message)


async def _in_handler(self: Any, fault: Fault, receive: Callable[[Any], Awaitable[Any]], message: Any) -> Any:
    """Run ``fault.around`` in a frame whose ``self`` is the actor, as the actor's own handler code would be.

    The loop-lag watchdog names a blocker by the innermost frame on the stack whose ``self`` is an actor: without
    this frame an injected :class:`BlockLoop` would be blamed on nobody.
    """
    return await fault.around(receive, message)


class Crash(Fault):
    """Raise :class:`InjectedFault` in the handler: on the next message, on every n-th, or with probability p.

    :param every: crash on every ``every``-th message (1 = every message)
    :param probability: crash each message with this probability (seeded)
    :param times: stop crashing after this many crashes (None: no limit)
    :param seed: seeds the probability draws
    """

    name = "crash"

    def __init__(
        self, *, every: int | None = None, probability: float | None = None, times: int | None = None, seed: int = 0
    ) -> None:
        super().__init__()
        if every is None and probability is None:
            every, times = 1, 1 if times is None else times  # the default: crash on the next message, once
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"Crash.every must be an int >= 1, got {every!r}")
        if probability is not None and not 0 <= probability <= 1:
            raise ValueError(f"Crash.probability must be within [0, 1], got {probability!r}")
        if times is not None and times < 0:
            raise ValueError(f"Crash.times must be >= 0 or None, got {times!r}")
        self.every = every
        self.probability = probability
        self.times = times
        self._rng = random.Random(seed)
        self._seen = 0
        self.crashes = 0

    def describe(self) -> str:
        if self.probability is not None:
            return f"crash p={self.probability}"
        return f"crash every={self.every} times={self.times}"

    def _should_crash(self) -> bool:
        if self.times is not None and self.crashes >= self.times:
            return False
        self._seen += 1
        if self.every is not None:
            return self._seen % self.every == 0
        assert self.probability is not None
        return self._rng.random() < self.probability

    async def around(self, receive: Callable[[Any], Awaitable[Any]], message: Any) -> Any:
        if self._should_crash():
            self.crashes += 1
            self._triggered(f"on {type(message).__name__}")
            raise InjectedFault(f"injected crash #{self.crashes} ({self.describe()})")
        return await receive(message)


class CrashOnStart(Fault):
    """Make ``on_start`` of the next ``times`` instances raise (a restart that fails to start)."""

    name = "crash_on_start"

    def __init__(self, *, times: int | None = 1) -> None:
        super().__init__()
        self.times = times
        self.crashes = 0

    def instrument(self, actor: Any) -> None:
        super().instrument(actor)
        inner = actor.on_start

        async def on_start() -> None:
            if self.times is None or self.crashes < self.times:
                self.crashes += 1
                self._triggered()
                raise InjectedFault(f"injected on_start failure #{self.crashes}")
            await inner()

        actor.on_start = on_start


class Hang(Fault):
    """The next ``times`` handlers await forever (until the handler deadline or a stop cancels them)."""

    name = "hang"

    def __init__(self, *, times: int | None = 1) -> None:
        super().__init__()
        self.times = times
        self.hangs = 0

    async def around(self, receive: Callable[[Any], Awaitable[Any]], message: Any) -> Any:
        if self.times is None or self.hangs < self.times:
            self.hangs += 1
            self._triggered(f"on {type(message).__name__}")
            await anyio.sleep_forever()
        return await receive(message)


class BlockLoop(Fault):
    """Block the event loop synchronously (``time.sleep``) for ``seconds`` in the next ``times`` handlers.

    This is what a CPU-bound or blocking-I/O handler does to every other actor in the same loop. The trigger
    record's detail gives the stall measured on the real clock.
    """

    name = "block_loop"

    def __init__(self, seconds: float, *, times: int | None = 1) -> None:
        super().__init__()
        if seconds <= 0:
            raise ValueError(f"BlockLoop.seconds must be > 0, got {seconds!r}")
        self.seconds = seconds
        self.times = times
        self.blocks = 0
        #: The real time each block held the loop, in seconds.
        self.stalls: list[float] = []

    async def around(self, receive: Callable[[Any], Awaitable[Any]], message: Any) -> Any:
        if self.times is None or self.blocks < self.times:
            self.blocks += 1
            began = time.perf_counter()
            time.sleep(self.seconds)  # noqa: ASYNC251  # blocking the loop is the fault being injected
            stall = time.perf_counter() - began
            self.stalls.append(stall)
            self._triggered(f"{self.seconds} s requested, loop held {stall:.3f} s")
        return await receive(message)


class Slow(Fault):
    """Delay each handler by ``seconds`` (awaited: the actor is slow, the loop is not blocked)."""

    name = "slow"

    def __init__(self, seconds: float) -> None:
        super().__init__()
        if seconds <= 0:
            raise ValueError(f"Slow.seconds must be > 0, got {seconds!r}")
        self.seconds = seconds
        self.delayed = 0

    async def around(self, receive: Callable[[Any], Awaitable[Any]], message: Any) -> Any:
        # One trigger record (the first delay), then counted: a slowed actor handles thousands of messages.
        self.delayed += 1
        if self.delayed == 1:
            self._triggered(f"{self.seconds} s per message")
        await anyio.sleep(self.seconds)
        return await receive(message)


class PoisonPill(msgspec.Struct, frozen=True):
    """The message :class:`Poison` makes deadly: whoever handles it raises :class:`InjectedFault`."""

    label: str = "poison"


class Poison(Fault):
    """Arm the target so that a :class:`PoisonPill` crashes it; :func:`inject` then tells it one pill per ``count``."""

    name = "poison"

    def __init__(self, count: int = 1) -> None:
        super().__init__()
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"Poison.count must be an int >= 0, got {count!r}")
        self.count = count
        self.crashes = 0

    async def around(self, receive: Callable[[Any], Awaitable[Any]], message: Any) -> Any:
        if type(message) is PoisonPill:
            self.crashes += 1
            self._triggered(message.label)
            raise InjectedFault(f"poison message {message.label!r}")
        return await receive(message)
