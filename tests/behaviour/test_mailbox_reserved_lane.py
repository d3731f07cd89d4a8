from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from actors import Actor, MailboxFull, MailboxSpec, Overflow, open_actor_system
from tests.conftest import virtual_time

pytestmark = pytest.mark.anyio


class Log(Actor[Any]):
    """Records every message; answers "get" with what it has seen."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def receive(self, message: Any) -> Any:
        if message == "get":
            return list(self.seen)
        self.seen.append(message)
        return None


class Gated(Log):
    """A Log whose handler of "hold" waits for ``gate``."""

    def __init__(self, gate: anyio.Event) -> None:
        super().__init__()
        self.gate = gate

    async def receive(self, message: Any) -> Any:
        if message == "hold":
            await self.gate.wait()
        return await super().receive(message)


class TestReservedLane:
    async def test_flood_of_ordinary_tells_leaves_reserved_slots_for_tell_reserved(self) -> None:
        async with open_actor_system() as system:
            ref = system.spawn(Log, mailbox=MailboxSpec(capacity=10, reserved=3))
            for i in range(100):  # no await: the actor cannot drain, the flood is total
                ref.tell(("flood", i))
            assert ref.statistics().queued == 7  # ordinary tells see capacity - reserved
            for i in range(5):
                ref.tell_reserved(("lifecycle", i))
            stats = ref.statistics()
            assert stats.queued == 10  # the whole capacity, never more
            assert stats.dropped == {"drop_newest": 93 + 2}
            assert stats.mailbox.reserved == 3
            seen = await ref.ask("get")
            # One FIFO: reserved messages keep their place in the order of arrival.
            assert seen == [("flood", i) for i in range(7)] + [("lifecycle", i) for i in range(3)]
            stats = ref.statistics()
            assert stats.sent == stats.processed + stats.dropped_total + stats.dead_lettered + stats.queued

    @virtual_time
    async def test_send_waits_at_the_ordinary_limit_not_in_the_reserved_slots(self) -> None:
        gate = anyio.Event()
        async with open_actor_system() as system:
            ref = system.spawn(lambda: Gated(gate), mailbox=MailboxSpec(capacity=4, reserved=2))
            ref.tell("hold")
            await anyio.sleep(0.01)  # the actor is now held inside its handler
            ref.tell(1)
            ref.tell(2)
            with anyio.move_on_after(1.0) as scope:
                await ref.send(3)  # two slots are free, but they are the reserved ones
            assert scope.cancelled_caught
            gate.set()
            await ref.send(3)  # room again once the actor drained
            assert await ref.ask("get") == ["hold", 1, 2, 3]
            assert ref.statistics().dropped_total == 0

    async def test_reject_mailbox_refuses_tell_reserved_only_when_completely_full(self) -> None:
        async with open_actor_system() as system:
            ref = system.spawn(Log, mailbox=MailboxSpec(capacity=3, overflow=Overflow.REJECT, reserved=1))
            ref.tell(1)
            ref.tell(2)
            with pytest.raises(MailboxFull):
                ref.tell(3)
            ref.tell_reserved(4)
            with pytest.raises(MailboxFull):
                ref.tell_reserved(5)
            assert await ref.ask("get") == [1, 2, 4]

    async def test_tell_reserved_wakes_a_sleeping_actor(self) -> None:
        async with open_actor_system() as system:
            ref = system.spawn(Log, mailbox=MailboxSpec(capacity=2, reserved=1))
            await anyio.lowlevel.checkpoint()  # let the actor start and sleep on its empty mailbox
            ref.tell_reserved("x")
            assert await ref.ask("get") == ["x"]
