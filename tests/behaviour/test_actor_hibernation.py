from __future__ import annotations

import gc
from typing import Any

import anyio
import pytest

from actors import Actor, ActorFailed, ActorRef, ExitKind, Terminated, open_actor_system
from supervisors import ChildSpec, start_supervisor
from tests.conftest import virtual_time

pytestmark = pytest.mark.anyio


class Idle(Actor[Any]):
    """Answers every message with it: an actor that only waits between messages."""

    async def receive(self, message: Any) -> Any:
        if message == "boom":
            raise RuntimeError("boom")
        if message == "hang":
            await anyio.sleep_forever()
        return message


class Hooks(Actor[Any]):
    """Records its lifecycle hooks in a shared log."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def receive(self, message: Any) -> None:
        self.log.append(f"got {message}")

    async def on_stop(self, reason: Any) -> None:
        self.log.append(f"on_stop {reason.kind.value}")

    def on_kill(self) -> None:
        self.log.append("on_kill")


class Ticker(Actor[Any]):
    """Sets a repeating timer in on_start and counts the ticks."""

    def __init__(self, ticks: list[float]) -> None:
        self.ticks = ticks

    async def on_start(self) -> None:
        self.send_every(1.0, "tick")

    async def receive(self, message: Any) -> None:
        self.ticks.append(anyio.current_time())


class Watcher(Actor[Any]):
    """Watches the ref it is told and keeps the Terminated it gets."""

    def __init__(self, seen: list[Terminated], got: anyio.Event) -> None:
        self.seen = seen
        self.got = got

    async def receive(self, message: Any) -> None:
        if isinstance(message, Terminated):
            self.seen.append(message)
            self.got.set()
        else:
            self.watch(message)


def actor_tasks() -> set[str]:
    """The names of the actors that hold a task right now."""
    return {name for task in anyio.get_running_tasks() if (name := task.name or "").startswith("actor:")}


class TestHibernation:
    async def test_started_actor_with_empty_mailbox_holds_no_task(self) -> None:
        async with open_actor_system() as system:
            refs = [await system.start(Idle, name=f"idle-{i}") for i in range(20)]
            assert actor_tasks() == set()
            # Woken by its first message: it answers, and only it has a task afterwards.
            assert await refs[3].ask("ping", timeout=5) == "ping"
            assert actor_tasks() == {"actor:idle-3"}

    async def test_idle_actor_costs_few_gc_tracked_objects(self) -> None:
        # Regression: each idle actor held a task waiting on its mailbox, ~40 GC-tracked objects (task, coroutines,
        # scopes, events) that every full collection rescanned; 10,000 of them made a full collection ~8x slower
        # per object than 1,000 did.
        async with open_actor_system() as system:
            await system.start(Idle, name="warm-up")
            gc.collect()
            before = len(gc.get_objects())
            refs = [await system.start(Idle, name=f"idle-{i}") for i in range(200)]
            gc.collect()
            per_actor = (len(gc.get_objects()) - before) / len(refs)
            assert per_actor < 15, per_actor

    async def test_hibernating_actor_stop_runs_on_stop(self) -> None:
        log: list[str] = []
        async with open_actor_system() as system:
            ref = await system.start(lambda: Hooks(log), name="hooks")
            assert actor_tasks() == set()
            reason = await ref.stop()
            assert reason is not None
            assert reason.kind is ExitKind.SHUTDOWN
            assert log == ["on_stop shutdown"]

    async def test_hibernating_actor_kill_skips_on_stop(self) -> None:
        log: list[str] = []
        async with open_actor_system() as system:
            ref = await system.start(lambda: Hooks(log), name="hooks")
            reason = await ref.stop(timeout=0)
            assert reason is not None
            assert reason.kind is ExitKind.KILLED
            assert log == ["on_kill"]

    async def test_message_to_hibernating_actor_is_handled_in_order(self) -> None:
        log: list[str] = []
        async with open_actor_system() as system:
            ref = await system.start(lambda: Hooks(log), name="hooks")
            for i in range(4):
                ref.tell(i)
            await ref.ask(4, timeout=5)
            await ref.stop()
            assert log == ["got 0", "got 1", "got 2", "got 3", "got 4", "on_stop shutdown"]

    async def test_watcher_of_hibernating_actor_gets_terminated(self) -> None:
        seen: list[Terminated] = []
        got = anyio.Event()
        async with open_actor_system() as system:
            target = await system.start(Idle, name="target")
            watcher = await system.start(lambda: Watcher(seen, got), name="watcher")
            await watcher.ask(target, timeout=5)
            assert "actor:target" not in actor_tasks()
            await target.stop()
            with anyio.fail_after(5):
                await got.wait()
            assert seen[0].ref is target
            assert seen[0].reason.kind is ExitKind.SHUTDOWN

    async def test_handler_deadline_still_applies_after_resume(self) -> None:
        async with open_actor_system() as system:
            ref = await system.start(Idle, name="guarded", handler_timeout=0.05)
            assert actor_tasks() == set()
            with pytest.raises(ActorFailed):
                await ref.ask("hang", timeout=5)

    async def test_supervisor_restarts_child_that_crashes_after_hibernating(self) -> None:
        async with open_actor_system() as system:
            supervisor = await start_supervisor(system, name="sup", intensity=3)
            child: ActorRef[Any] = await supervisor.start_child(ChildSpec("child", Idle))
            assert not any(name.endswith("child") for name in actor_tasks())
            with pytest.raises(ActorFailed):
                await child.ask("boom", timeout=5)
            # The same ref, a new instance: it answers again.
            assert await child.ask("again", timeout=5) == "again"
            assert child.statistics().restarts == 1


@virtual_time
class TestHibernationTimers:
    async def test_timer_set_in_on_start_wakes_hibernating_actor(self) -> None:
        ticks: list[float] = []
        async with open_actor_system() as system:
            start = anyio.current_time()
            ref = await system.start(lambda: Ticker(ticks), name="ticker")
            await anyio.sleep(3.5)
            assert [round(t - start, 6) for t in ticks] == [1.0, 2.0, 3.0]
            await ref.stop()
