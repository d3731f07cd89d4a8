from __future__ import annotations

import logging
import threading
import time
from typing import Any

import anyio
import pytest

from actors import Actor, MailboxSpec, open_actor_system
from supervisors import ChildSpec, SupervisorEventKind, SupervisorRef, start_supervisor
from supervisors._watchdog import WATCHDOG_THREAD_NAME, LoopBlock, LoopLagWatchdog, open_loop_watchdog

# Real blocking on the real clock: a virtual clock cannot see a loop that is stuck in time.sleep. Thresholds are
# tens of milliseconds and every wait is bounded, so each test takes well under two seconds.
pytestmark = pytest.mark.anyio

THRESHOLD = 0.1
INTERVAL = 0.02


class Blocker(Actor[Any]):
    """Blocks the event loop on ("block", seconds); busy-waits on ("spin", seconds); answers "ping" with itself."""

    def __init__(self, instances: list[Blocker] | None = None) -> None:
        if instances is not None:
            instances.append(self)

    async def receive(self, message: Any) -> Any:
        match message:
            case ("block", seconds):
                time.sleep(seconds)  # noqa: ASYNC251  # the fault under test: a synchronous call in a handler
            case ("spin", seconds):
                end = time.perf_counter() + seconds
                while time.perf_counter() < end:
                    pass
            case "ping":
                return self
        return None


class PingPong(Actor[Any]):
    """A well-behaved actor: bounces a counter to a peer until it reaches a limit."""

    def __init__(self) -> None:
        self.peer: Any = None
        self.bounced = 0

    async def receive(self, message: Any) -> Any:
        match message:
            case ("peer", peer):
                self.peer = peer
            case int(n) if n > 0:
                self.bounced += 1
                self.peer.tell(n - 1)
            case "count":
                return self.bounced
        return None


async def wait_for(condition: Any, *, within: float = 10.0) -> None:
    """Poll ``condition()`` on the real clock until it holds (a guard against hangs, not a timing assertion)."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110  # the conditions live in several places; polling is simplest
            await anyio.sleep(0.01)


def watchdog_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == WATCHDOG_THREAD_NAME]


def event_kinds(supervisor: SupervisorRef, child_id: str) -> list[SupervisorEventKind]:
    return [event.kind for event in supervisor.events.history() if event.child_id == child_id]


class TestBlockAttribution:
    async def test_supervised_child_sleeping_in_receive_named_and_restarted(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="agentwatch.supervisors.watchdog")
        instances: list[Blocker] = []
        async with open_actor_system() as system:
            supervisor = await start_supervisor(
                system, name="sup", children=[ChildSpec("blocker", lambda: Blocker(instances))]
            )
            ref = system.lookup("sup/blocker")
            async with open_loop_watchdog(system, threshold=THRESHOLD, interval=INTERVAL) as watchdog:
                ref.tell(("block", 0.4))
                await wait_for(lambda: SupervisorEventKind.RESTARTED in event_kinds(supervisor, "blocker"))
            assert watchdog.history()[0].actor == "sup/blocker"
            assert watchdog.history()[0].supervisor == "sup"
            assert watchdog.history()[0].seconds > THRESHOLD
            blocked = [e for e in supervisor.events.history() if e.kind is SupervisorEventKind.BLOCKED_LOOP]
            assert [e.child_id for e in blocked] == ["blocker"]
            # The replacement instance serves the same ref.
            assert len(instances) == 2
            assert await ref.ask("ping") is instances[1]
            await supervisor.stop()
        assert any("sup/blocker" in record.getMessage() for record in caplog.records)

    async def test_unsupervised_actor_blocking_reported_by_name_and_left_running(self) -> None:
        instances: list[Blocker] = []
        reported: list[LoopBlock] = []
        async with open_actor_system() as system:
            ref = system.spawn(lambda: Blocker(instances), name="lonely")
            async with open_loop_watchdog(
                system, threshold=THRESHOLD, interval=INTERVAL, on_block=reported.append
            ) as watchdog:
                ref.tell(("block", 0.4))
                await wait_for(lambda: watchdog.blocks > 0)
            assert [(b.actor, b.supervisor) for b in reported] == [("lonely", None)]
            assert watchdog.history() == reported
            assert await ref.ask("ping") is instances[0]
            assert len(instances) == 1

    async def test_block_outside_any_actor_reported_without_a_name(self) -> None:
        async with open_actor_system() as system:
            supervisor = await start_supervisor(system, name="sup", children=[ChildSpec("blocker", Blocker)])
            async with open_loop_watchdog(system, threshold=THRESHOLD, interval=INTERVAL) as watchdog:
                time.sleep(0.3)  # noqa: ASYNC251  # the test's own task blocks the loop, not an actor
                await wait_for(lambda: watchdog.blocks > 0)
            assert [b.actor for b in watchdog.history()] == [None]
            assert SupervisorEventKind.BLOCKED_LOOP not in event_kinds(supervisor, "blocker")
            await supervisor.stop()

    async def test_loop_hogged_by_many_short_handlers_not_blamed_on_an_actor(self) -> None:
        # Each handler busy-waits 1 ms and the drain loop runs 256 of them between yields: the loop lags far past
        # the threshold, but no single handler invocation holds it, so no child may be killed for it. Samples are
        # 50 ms apart here, so that only an OS stall of 50 ms within one 1 ms handler could fool the sampler.
        instances: list[Blocker] = []
        async with open_actor_system() as system:
            supervisor = await start_supervisor(
                system,
                name="sup",
                children=[ChildSpec("busy", lambda: Blocker(instances), mailbox=MailboxSpec(capacity=1000))],
            )
            ref = system.lookup("sup/busy")
            async with open_loop_watchdog(system, threshold=THRESHOLD, interval=0.05) as watchdog:
                for _ in range(300):
                    ref.tell(("spin", 0.001))
                await wait_for(lambda: ref.statistics().processed >= 300 and watchdog.blocks > 0)
                await anyio.sleep(0.15)
            assert watchdog.blocks >= 1
            assert all(block.actor is None for block in watchdog.history())
            assert SupervisorEventKind.BLOCKED_LOOP not in event_kinds(supervisor, "busy")
            assert len(instances) == 1
            await supervisor.stop()


class TestQuietSystem:
    async def test_busy_well_behaved_system_produces_no_report(self) -> None:
        async with open_actor_system() as system:
            pairs = []
            for i in range(20):
                left = system.spawn(PingPong, name=f"left-{i}")
                right = system.spawn(PingPong, name=f"right-{i}")
                left.tell(("peer", right))
                right.tell(("peer", left))
                pairs.append((left, right))
            async with open_loop_watchdog(system, threshold=THRESHOLD, interval=INTERVAL) as watchdog:
                for left, _ in pairs:
                    left.tell(20_000)
                await anyio.sleep(0.4)
                bounced = sum([await left.ask("count") + await right.ask("count") for left, right in pairs])
            assert bounced > 10_000  # the loop really was busy all along
            assert watchdog.blocks == 0
            assert watchdog.history() == []


class TestLifecycle:
    async def test_thread_runs_inside_and_is_gone_after_exit(self) -> None:
        assert watchdog_threads() == []
        async with open_actor_system() as system:
            async with open_loop_watchdog(system, threshold=THRESHOLD, interval=INTERVAL) as watchdog:
                assert watchdog.is_running
                assert len(watchdog_threads()) == 1
            assert not watchdog.is_running
            assert watchdog_threads() == []

    async def test_body_raising_still_joins_thread(self) -> None:
        async with open_actor_system() as system:
            with pytest.raises(LookupError, match="boom"):
                async with open_loop_watchdog(system, threshold=THRESHOLD, interval=INTERVAL):
                    raise LookupError("boom")
        assert watchdog_threads() == []

    async def test_on_block_raising_logged_and_watchdog_keeps_reporting(self, caplog: pytest.LogCaptureFixture) -> None:
        calls: list[LoopBlock] = []

        def broken(block: LoopBlock) -> None:
            calls.append(block)
            raise RuntimeError("observer bug")

        async with (
            open_actor_system() as system,
            open_loop_watchdog(system, threshold=THRESHOLD, interval=INTERVAL, on_block=broken) as watchdog,
        ):
            time.sleep(0.25)  # noqa: ASYNC251  # a deliberate block
            await wait_for(lambda: watchdog.blocks >= 1)
            time.sleep(0.25)  # noqa: ASYNC251  # and another one, after the observer failed
            await wait_for(lambda: watchdog.blocks >= 2)
        assert len(calls) == 2
        assert any("on_block raised" in record.getMessage() for record in caplog.records)

    @pytest.mark.parametrize(
        ("options", "error", "field"),
        [
            ({"threshold": 0}, ValueError, "threshold"),
            ({"threshold": float("inf")}, ValueError, "threshold"),
            ({"interval": -1}, ValueError, "interval"),
            ({"interval": "fast"}, TypeError, "interval"),
            ({"threshold": True}, TypeError, "threshold"),
            ({"history": 0}, ValueError, "history"),
            ({"on_block": 3}, TypeError, "on_block"),
        ],
    )
    async def test_bad_argument_rejected_naming_field(
        self, options: dict[str, Any], error: type[Exception], field: str
    ) -> None:
        async with open_actor_system() as system:
            with pytest.raises(error, match=field):
                LoopLagWatchdog(system, **options)

    async def test_run_twice_refused(self) -> None:
        async with open_actor_system() as system:
            watchdog = LoopLagWatchdog(system, threshold=THRESHOLD, interval=INTERVAL)
            async with anyio.create_task_group() as tg:
                await tg.start(watchdog.run)
                with pytest.raises(RuntimeError, match="runs once"):
                    await watchdog.run()
                tg.cancel_scope.cancel()
            assert watchdog_threads() == []
