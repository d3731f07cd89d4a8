from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import pytest

from actors.chat._bridge_routes import ConnectionRoutes
from actors.chat._bridge_slow_consumers import stalled_turns
from actors.chat._connection import ConnectionProgress

if TYPE_CHECKING:
    from actors._ref import ActorRef


def connection(connection_id: str, turn_started: float | None) -> ConnectionRoutes:
    progress = ConnectionProgress()
    progress.turn_started = turn_started
    return ConnectionRoutes(connection_id, writer=cast("ActorRef[Any]", None), principal="p", progress=progress)


class TestStalledTurns:
    def test_stalled_turns_past_the_deadline_are_stalled_in_order(self) -> None:
        busy = [connection("a", 0.0), connection("idle", None), connection("b", 1.0), connection("fresh", 9.5)]
        stalled, extra_ticks = stalled_turns(busy, 10.0, slow_consumer_after=5.0, next_tick=11.0)
        assert [c.connection_id for c in stalled] == ["a", "b"]
        assert extra_ticks == []

    def test_stalled_turns_at_the_deadline_itself_is_not_stalled(self) -> None:
        # A send that completes at the deadline is not a stalled one: only "longer than" counts.
        stalled, extra_ticks = stalled_turns([connection("a", 5.0)], 10.0, slow_consumer_after=5.0, next_tick=11.0)
        assert stalled == []
        assert extra_ticks == [pytest.approx(1e-6)]

    def test_stalled_turns_deadline_before_next_tick_asks_for_an_extra_tick(self) -> None:
        busy = [connection("soon", 6.0), connection("later", 6.9), connection("after next tick", 8.0)]
        stalled, extra_ticks = stalled_turns(busy, 10.0, slow_consumer_after=5.0, next_tick=12.0)
        assert stalled == []
        assert extra_ticks == [pytest.approx(1.0 + 1e-6), pytest.approx(1.9 + 1e-6)]

    def test_stalled_turns_no_turn_running_is_never_stalled(self) -> None:
        stalled, extra_ticks = stalled_turns([connection("a", None)], 1e9, slow_consumer_after=0.0, next_tick=2e9)
        assert (stalled, extra_ticks) == ([], [])
