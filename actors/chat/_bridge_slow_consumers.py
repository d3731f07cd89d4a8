from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

    from actors.chat._bridge_routes import ConnectionRoutes

#: How long after its deadline a blocked turn of sends is ended (1 µs: "longer than", robustly in floats).
DEADLINE_SLACK: Final = 1e-6


def stalled_turns(
    busy: Iterable[ConnectionRoutes], now: float, *, slow_consumer_after: float, next_tick: float
) -> tuple[list[ConnectionRoutes], list[float]]:
    """The connections whose writer has been blocked in one turn of sends for ``slow_consumer_after`` seconds.

    A writer keeps no timer of its own (one per turn cost more than the frames): it records when its turn started
    (``ConnectionProgress.turn_started``), and the bridge's tick looks. A turn whose deadline falls before the
    next tick asks for one extra tick just after the deadline, so that a client that stopped reading is closed
    when its time is up, not at a tick boundary.

    :param busy: the connections that can be in a turn of sends (those handed frames since last found idle)
    :param now: loop time, in seconds
    :param next_tick: loop time of the next regular tick
    :return: the stalled connections, in ``busy``'s order; and the delays (from ``now``) of the extra ticks, one
        per connection whose deadline falls before ``next_tick``
    """
    stalled: list[ConnectionRoutes] = []
    extra_ticks: list[float] = []
    for connection in busy:
        started = connection.progress.turn_started
        if started is None:
            continue
        # Just past the deadline: a send that completes at the deadline itself is not a stalled one (and which of
        # the two happens first at one instant would be up to the scheduler).
        due = started + slow_consumer_after + DEADLINE_SLACK
        if now >= due:
            stalled.append(connection)
        elif due < next_tick:
            extra_ticks.append(due - now)
    return stalled, extra_ticks
