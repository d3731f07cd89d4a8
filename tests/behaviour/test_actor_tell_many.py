from __future__ import annotations

from typing import Any

import anyio
import pytest

from actors import MailboxFull, MailboxSpec, Overflow, open_actor_system
from tests.behaviour.test_bridge_support import TapRecorder

pytestmark = pytest.mark.anyio


async def blocked(ref: Any) -> anyio.Event:
    """Park the recorder in a handler, so that what is told next stays queued."""
    gate = anyio.Event()
    ref.tell(("block", gate))
    while ref.statistics().queued:
        await anyio.lowlevel.checkpoint()
    return gate


class TestTellMany:
    async def test_tell_many_room_for_all_queued_in_order_and_counted(self) -> None:
        log: list[Any] = []
        async with open_actor_system() as system:
            ref = await system.start(lambda: TapRecorder(log), mailbox=MailboxSpec(capacity=10))
            assert ref.tell_many([1, 2, 3]) == 3
            assert ref.tell_many([]) == 0
            ref.tell(4)
            await ref.ask("get")
            mailbox = ref.statistics().mailbox
        assert log == [1, 2, 3, 4]
        assert (mailbox.sent, mailbox.processed, mailbox.dropped_total) == (5, 5, 0)

    async def test_tell_many_wakes_a_sleeping_actor(self) -> None:
        log: list[Any] = []
        async with open_actor_system() as system:
            ref = await system.start(lambda: TapRecorder(log))
            await ref.ask("get")  # it has run, and now sleeps on its empty mailbox
            ref.tell_many(["a", "b"])
            with anyio.fail_after(5):
                while len(log) < 2:
                    await anyio.lowlevel.checkpoint()
        assert log == ["a", "b"]

    async def test_tell_many_drop_newest_past_the_bound_each_told_in_turn(self) -> None:
        log: list[Any] = []
        async with open_actor_system() as system:
            ref = await system.start(lambda: TapRecorder(log), mailbox=MailboxSpec(capacity=3))
            gate = await blocked(ref)
            assert ref.tell_many(list(range(5))) == 3  # exactly five tells: the last two are dropped
            gate.set()
            await ref.ask("get")
            mailbox = ref.statistics().mailbox
        assert log == [0, 1, 2]
        assert mailbox.dropped == {"drop_newest": 2}
        assert mailbox.sent == mailbox.processed + mailbox.dropped_total + mailbox.dead_lettered + mailbox.queued

    async def test_tell_many_drop_oldest_keeps_the_newest(self) -> None:
        log: list[Any] = []
        async with open_actor_system() as system:
            spec = MailboxSpec(capacity=3, overflow=Overflow.DROP_OLDEST)
            ref = await system.start(lambda: TapRecorder(log), mailbox=spec)
            gate = await blocked(ref)
            assert ref.tell_many(list(range(5))) == 5  # each one queued, two older ones dropped for them
            gate.set()
            await ref.ask("get")
            mailbox = ref.statistics().mailbox
        assert log == [2, 3, 4]
        assert mailbox.dropped == {"drop_oldest": 2}

    async def test_tell_many_reject_raises_with_the_prefix_queued(self) -> None:
        log: list[Any] = []
        async with open_actor_system() as system:
            spec = MailboxSpec(capacity=2, overflow=Overflow.REJECT)
            ref = await system.start(lambda: TapRecorder(log), mailbox=spec)
            gate = await blocked(ref)
            with pytest.raises(MailboxFull):
                ref.tell_many(["x", "y", "z"])
            gate.set()
            while ref.statistics().queued:
                await anyio.lowlevel.checkpoint()
        assert log == ["x", "y"]

    async def test_tell_many_to_a_stopped_actor_dead_lettered_none_queued(self) -> None:
        async with open_actor_system() as system:
            ref = await system.start(lambda: TapRecorder([]))
            await ref.stop()
            assert ref.tell_many(["late", "later"]) == 0
            assert system.dead_letters.statistics().total == 2
