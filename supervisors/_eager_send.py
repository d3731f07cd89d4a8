from __future__ import annotations

from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Generator


class InFlightSend:
    """The rest of a send coroutine that ran in its caller's stack until it first had to wait.

    Awaiting it (once, from any task) runs the rest: what the coroutine yielded goes to the awaiting task's event
    loop exactly as if that task had been running the coroutine from the start, and a cancellation thrown into the
    awaiting task is thrown into the coroutine. Only for asyncio, whose coroutines yield futures that any task may
    wait on; trio's yield traps that name the task that was current when they were built.
    """

    __slots__ = ("_coroutine", "_yielded")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coroutine: Coroutine[Any, Any, Any] | None = coroutine
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, None]:
        coroutine = self._coroutine
        if coroutine is None:
            raise RuntimeError("an in-flight send can be awaited only once")
        self._coroutine = None
        yielded = self._yielded
        while True:
            try:
                value = yield yielded
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # thrown into the awaiting task (a cancellation): the send's own business
                try:
                    yielded = coroutine.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                yielded = coroutine.send(value)
            except StopIteration:
                return


def start_eagerly(awaitable: Awaitable[Any]) -> InFlightSend | None:
    """Run ``awaitable`` in the caller's stack until it returns (None) or first has to wait (the rest, to await).

    An exception it raises before it waits propagates from here.
    """
    coroutine = awaitable if isinstance(awaitable, Coroutine) else _awaiting(awaitable)
    try:
        yielded = coroutine.send(None)
    except StopIteration:
        return None
    return InFlightSend(coroutine, yielded)


async def _awaiting(awaitable: Awaitable[Any]) -> None:
    await awaitable
