from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ._virtual_time import loop_clock

if TYPE_CHECKING:
    from collections.abc import Callable


class Clock:
    """The runtime's one notion of time.

    ``now()`` is the event loop's clock in seconds: under trio's ``MockClock`` (or the virtual asyncio loop) it is
    virtual, so every timer, deadline and detector built on it runs on virtual time in tests and simulations.
    ``now_ms()`` is wall-clock milliseconds derived from it, anchored once, so event timestamps and observation
    times stay consistent with each other on either kind of clock.

    Must be created inside the event loop whose time it reads (``open_actor_system`` does): it keeps that loop's
    clock function rather than asking anyio for the current backend on every call, which the bridge and the
    writers would pay once per event and per frame.

    :param epoch_ms: the wall-clock time (ms since the Unix epoch) that loop time "now" maps to; by default the
        real wall clock at creation. A simulation passes a fixed value so that its reports are reproducible.
    """

    __slots__ = ("_anchor", "_epoch_ms", "_loop_time")

    def __init__(self, *, epoch_ms: int | None = None) -> None:
        self._loop_time: Callable[[], float] = loop_clock()
        self._anchor = self._loop_time()
        self._epoch_ms = int(time.time() * 1000) if epoch_ms is None else epoch_ms

    def now(self) -> float:
        """Return the event loop's time in seconds."""
        return self._loop_time()

    def now_ms(self) -> int:
        """Return wall-clock milliseconds since the Unix epoch, advancing with the loop's (possibly virtual) time."""
        # Rounded, not truncated: 0.8 s of virtual time can come out as 799.9999999999999 ms, and the two backends'
        # clocks hit such values at different instants, which made a seeded simulation differ by 1 ms between them.
        return self._epoch_ms + round((self._loop_time() - self._anchor) * 1000)

    def to_ms(self, loop_time: float) -> int:
        """Convert a loop time (seconds) to wall-clock milliseconds on this clock."""
        return self._epoch_ms + round((loop_time - self._anchor) * 1000)

    def from_ms(self, wall_ms: int) -> float:
        """Convert wall-clock milliseconds on this clock back to loop time (seconds)."""
        return self._anchor + (wall_ms - self._epoch_ms) / 1000
