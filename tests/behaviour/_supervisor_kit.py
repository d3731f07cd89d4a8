from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import anyio

from actors import Actor, ExitReason
from supervisors import ChildSpec, SupervisorEventKind

if TYPE_CHECKING:
    from collections.abc import Callable

    from supervisors import SupervisorEvent, SupervisorRef

# Every instance gets a serial of its own: unlike id(), a serial is never reused after garbage collection, so
# "same serial" proves "same instance".
_serials = itertools.count(1)


class Journal:
    """What every child instance did, in order, with the (virtual) time: shared by all children of one test.

    Entries are ``(what, child_id, at, detail)``: ``attempt`` (``on_start`` began), ``start`` (it completed),
    ``stop`` (``on_stop`` began; detail is the exit kind), ``stopped`` (``on_stop`` finished), ``killed``
    (cancelled, ``on_kill`` ran).
    """

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, float, str]] = []

    def record(self, what: str, child_id: str, detail: str = "") -> None:
        self.entries.append((what, child_id, anyio.current_time(), detail))

    def of(self, what: str) -> list[str]:
        """The children that did ``what``, in order."""
        return [child for kind, child, _, _ in self.entries if kind == what]

    def count(self, what: str, child_id: str) -> int:
        return sum(1 for kind, child, _, _ in self.entries if kind == what and child == child_id)

    def times(self, what: str, child_id: str) -> list[float]:
        return [at for kind, child, at, _ in self.entries if kind == what and child == child_id]

    def mark(self) -> int:
        """A position in the journal, to look only at what happens after it."""
        return len(self.entries)

    def since(self, mark: int, *whats: str) -> list[tuple[str, str]]:
        """``(what, child_id)`` pairs recorded after ``mark``, keeping only the kinds in ``whats``."""
        return [(kind, child) for kind, child, _, _ in self.entries[mark:] if kind in whats]


class Worker(Actor[Any]):
    """A child that does what a test tells it.

    Messages: ``"boom"`` raises; ``"exit"`` stops itself (exit ``normal``); ``"serial"`` answers its instance
    serial; ``"seen"`` answers the other messages it got, in order; ``("hang", s)`` awaits ``s`` seconds.

    :param start_fails: given the 1-based number of this start attempt for its id, whether ``on_start`` raises
    :param crash_at_start: whether the instance tells itself ``"boom"`` as it starts (a crash loop), asked
        again at every start so a test can switch it off
    :param stop_delay: seconds ``on_stop`` awaits (a child slow to stop, or one ignoring a graceful stop)
    """

    def __init__(
        self,
        child_id: str,
        journal: Journal,
        *,
        start_fails: Callable[[int], bool] | None = None,
        crash_at_start: Callable[[], bool] | None = None,
        stop_delay: float = 0.0,
    ) -> None:
        self.child_id = child_id
        self.journal = journal
        self.serial = next(_serials)
        self.seen: list[Any] = []
        self._start_fails = start_fails
        self._crash_at_start = crash_at_start
        self._stop_delay = stop_delay

    async def on_start(self) -> None:
        self.journal.record("attempt", self.child_id)
        attempt = self.journal.count("attempt", self.child_id)
        if self._start_fails is not None and self._start_fails(attempt):
            raise RuntimeError(f"{self.child_id} cannot start (attempt {attempt})")
        self.journal.record("start", self.child_id)
        if self._crash_at_start is not None and self._crash_at_start():
            self.ref.tell("boom")

    async def receive(self, message: Any) -> Any:
        if message == "boom":
            raise RuntimeError(f"{self.child_id} crashed")
        if message == "exit":
            self.stop()
            return None
        if message == "serial":
            return self.serial
        if message == "seen":
            return list(self.seen)
        if isinstance(message, tuple) and message[0] == "hang":
            await anyio.sleep(message[1])
            return None
        self.seen.append(message)
        return None

    async def on_stop(self, reason: ExitReason) -> None:
        self.journal.record("stop", self.child_id, reason.kind.value)
        if self._stop_delay:
            await anyio.sleep(self._stop_delay)
        self.journal.record("stopped", self.child_id)

    def on_kill(self) -> None:
        self.journal.record("killed", self.child_id)


def worker(
    journal: Journal,
    child_id: str,
    *,
    start_fails: Callable[[int], bool] | None = None,
    crash_at_start: Callable[[], bool] | None = None,
    stop_delay: float = 0.0,
    **spec_options: Any,
) -> ChildSpec:
    """A ChildSpec for a :class:`Worker`; ``spec_options`` go to :class:`ChildSpec`."""

    def start() -> Worker:
        return Worker(child_id, journal, start_fails=start_fails, crash_at_start=crash_at_start, stop_delay=stop_delay)

    return ChildSpec(child_id, start, **spec_options)


def always() -> bool:
    return True


def after_first(attempt: int) -> bool:
    """``start_fails`` for a child that starts once and never again."""
    return attempt > 1


async def wait_until(predicate: Callable[[], bool], *, within: float = 600.0, what: str = "condition") -> None:
    """Poll ``predicate`` on the (virtual) clock; fail the test if it does not hold within ``within`` seconds."""
    deadline = anyio.current_time() + within
    step = 0.001
    while not predicate():
        if anyio.current_time() > deadline:
            raise AssertionError(f"{what} did not happen within {within} s")
        await anyio.sleep(step)
        # Fine-grained at first, coarser over long waits (a cool-down of minutes stays a few hundred polls).
        step = min(step * 1.5, 0.1)


def events(sup: SupervisorRef, kind: SupervisorEventKind, child_id: str | None = None) -> list[SupervisorEvent]:
    """The events of one kind (and child, if given) published so far, oldest first."""
    return [e for e in sup.events.history() if e.kind is kind and (child_id is None or e.child_id == child_id)]


def kinds(sup: SupervisorRef, child_id: str, *, supervisor: str | None = None) -> list[SupervisorEventKind]:
    """The kinds of the events about one child, oldest first (of one supervisor of the tree, if given)."""
    return [
        e.kind
        for e in sup.events.history()
        if e.child_id == child_id and (supervisor is None or e.supervisor == supervisor)
    ]


async def wait_for_event(
    sup: SupervisorRef, kind: SupervisorEventKind, child_id: str | None = None, *, count: int = 1
) -> SupervisorEvent:
    """Wait until ``count`` events of ``kind`` (for ``child_id``) were published; return the last of them."""
    await wait_until(lambda: len(events(sup, kind, child_id)) >= count, what=f"{count} x {kind.value} {child_id}")
    return events(sup, kind, child_id)[count - 1]


async def serials(sup: SupervisorRef, *child_ids: str) -> dict[str, int]:
    """The instance serial of each named child, which must be running."""
    result: dict[str, int] = {}
    for child in await sup.which_children():
        if child.id in child_ids:
            assert child.ref is not None, f"{child.id} is {child.state.value}, not running"
            result[child.id] = await child.ref.ask("serial")
    return result


STARTED = SupervisorEventKind.STARTED
FAILED = SupervisorEventKind.FAILED
RESTARTED = SupervisorEventKind.RESTARTED
RESTART_SCHEDULED = SupervisorEventKind.RESTART_SCHEDULED
DETACHED = SupervisorEventKind.DETACHED
REATTACHED = SupervisorEventKind.REATTACHED
ESCALATED = SupervisorEventKind.ESCALATED
SHUT_DOWN = SupervisorEventKind.SHUT_DOWN
