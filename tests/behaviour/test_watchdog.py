from __future__ import annotations

import logging
import threading
import time
from typing import Any, NamedTuple

import anyio
import anyio.abc
import pytest

from actors import Actor, MailboxSpec, open_actor_system
from supervisors import ChildSpec, SupervisorEventKind, SupervisorRef, start_supervisor
from supervisors._watchdog import WATCHDOG_THREAD_NAME, LoopBlock, LoopLagWatchdog, open_loop_watchdog

# Real blocking on the real clock: a virtual clock cannot see a loop that is stuck in time.sleep. Every wait is
# bounded, and nothing asserts a duration. A loaded machine stalls the loop too (the OS runs something else): such
# lags are real, and the watchdog reports them unattributed (no actor's handler was seen holding the loop), so
# the tests assert who was named and what was done about it, and let unattributed lags be. The deliberate blocks
# are sized from the scheduling noise measured at the start of each test (see loop_margins).
pytestmark = pytest.mark.anyio

THRESHOLD = 0.15
INTERVAL = 0.02


class LoopMargins(NamedTuple):
    """Watchdog settings and a deliberate block's length, sized for the machine's load as measured now.

    :param noise: the worst lateness of a short sleep on this loop, measured now (the machine's scheduling noise)
    :param threshold: the watchdog's threshold: at least THRESHOLD, and four times the noise
    :param block: how long a deliberate block lasts: long enough past the threshold for two samples of the stack
        to agree (attribution), with room for a sampler thread that the OS wakes late
    """

    noise: float
    threshold: float
    block: float


async def loop_margins(*, samples: int = 30, step: float = 0.01) -> LoopMargins:
    """Measure how late this loop wakes from ``samples`` sleeps of ``step`` s, and size the margins from it."""
    noise = 0.0
    for _ in range(samples):
        start = time.monotonic()
        await anyio.sleep(step)
        noise = max(noise, time.monotonic() - start - step)
    threshold = max(THRESHOLD, 4 * noise)
    return LoopMargins(noise=noise, threshold=threshold, block=3 * threshold + 4 * INTERVAL + 4 * noise)


class LagMeter:
    """The loop's lag measured apart from the watchdog: a task that sleeps ``interval`` and records how late it woke.

    Whatever stalls the loop (a block, or the OS running something else) delays it as much as the watchdog's own
    heartbeat: a lag the watchdog reports and this meter did not see is a false report.
    """

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self.worst = 0.0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            start = time.monotonic()
            await anyio.sleep(self.interval)
            self.worst = max(self.worst, time.monotonic() - start - self.interval)


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
    """A well-behaved actor: bounces a counter to a peer until it reaches a limit.

    :param total: a shared tally of bounces (one slot), counted by every PingPong given it
    """

    def __init__(self, total: list[int] | None = None) -> None:
        self.peer: Any = None
        self.bounced = 0
        self.total = total if total is not None else [0]

    async def receive(self, message: Any) -> Any:
        match message:
            case ("peer", peer):
                self.peer = peer
            case int(n) if n > 0:
                self.bounced += 1
                self.total[0] += 1
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


def named_blocks(watchdog: LoopLagWatchdog) -> list[LoopBlock]:
    """The blocks the watchdog attributed to an actor (a loaded machine may add unattributed ones)."""
    return [block for block in watchdog.history() if block.actor is not None]


def event_kinds(supervisor: SupervisorRef, child_id: str) -> list[SupervisorEventKind]:
    return [event.kind for event in supervisor.events.history() if event.child_id == child_id]


class TestBlockAttribution:
    async def test_supervised_child_sleeping_in_receive_named_and_restarted(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="agentwatch.supervisors.watchdog")
        instances: list[Blocker] = []
        margins = await loop_margins()
        async with open_actor_system() as system:
            supervisor = await start_supervisor(
                system, name="sup", children=[ChildSpec("blocker", lambda: Blocker(instances))]
            )
            ref = system.lookup("sup/blocker")
            async with open_loop_watchdog(system, threshold=margins.threshold, interval=INTERVAL) as watchdog:
                ref.tell(("block", margins.block))
                await wait_for(lambda: SupervisorEventKind.RESTARTED in event_kinds(supervisor, "blocker"))
            [named] = named_blocks(watchdog)
            assert (named.actor, named.supervisor) == ("sup/blocker", "sup")
            assert named.seconds > margins.threshold
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
        margins = await loop_margins()
        async with open_actor_system() as system:
            ref = system.spawn(lambda: Blocker(instances), name="lonely")
            async with open_loop_watchdog(
                system, threshold=margins.threshold, interval=INTERVAL, on_block=reported.append
            ) as watchdog:
                ref.tell(("block", margins.block))
                await wait_for(lambda: named_blocks(watchdog) != [])
            assert [(b.actor, b.supervisor) for b in reported if b.actor is not None] == [("lonely", None)]
            assert watchdog.history() == reported
            assert await ref.ask("ping") is instances[0]
            assert len(instances) == 1

    async def test_block_outside_any_actor_reported_without_a_name(self) -> None:
        margins = await loop_margins()
        async with open_actor_system() as system:
            supervisor = await start_supervisor(system, name="sup", children=[ChildSpec("blocker", Blocker)])
            async with open_loop_watchdog(system, threshold=margins.threshold, interval=INTERVAL) as watchdog:
                time.sleep(margins.block)  # noqa: ASYNC251  # the test's own task blocks the loop, not an actor
                await wait_for(lambda: watchdog.blocks > 0)
            # Reported (the block is longer than the threshold, whatever else the machine did), never named.
            assert max(b.seconds for b in watchdog.history()) > margins.threshold
            assert [b.actor for b in watchdog.history()] == [None] * watchdog.blocks
            assert SupervisorEventKind.BLOCKED_LOOP not in event_kinds(supervisor, "blocker")
            await supervisor.stop()

    async def test_loop_hogged_by_many_short_handlers_not_blamed_on_an_actor(self) -> None:
        # Each handler busy-waits 1 ms and the drain loop runs 256 of them between yields: the loop lags past the
        # threshold (0.1 s), but no single handler invocation holds it, so no child may be killed for it. Samples are
        # at least 0.1 s apart here (more on a noisy machine), so that only an OS stall that long within one 1 ms
        # handler could fool the sampler.
        instances: list[Blocker] = []
        margins = await loop_margins()
        interval = max(0.1, 5 * margins.noise)
        async with open_actor_system() as system:
            supervisor = await start_supervisor(
                system,
                name="sup",
                children=[ChildSpec("busy", lambda: Blocker(instances), mailbox=MailboxSpec(capacity=1000))],
            )
            ref = system.lookup("sup/busy")
            async with open_loop_watchdog(system, threshold=0.1, interval=interval) as watchdog:
                for _ in range(300):
                    ref.tell(("spin", 0.001))
                await wait_for(lambda: ref.statistics().processed >= 300 and watchdog.blocks > 0)
                await anyio.sleep(3 * interval)
            assert watchdog.blocks >= 1
            assert all(block.actor is None for block in watchdog.history())
            assert SupervisorEventKind.BLOCKED_LOOP not in event_kinds(supervisor, "busy")
            assert len(instances) == 1
            await supervisor.stop()


class TestQuietSystem:
    async def test_busy_well_behaved_system_produces_no_report(self) -> None:
        margins = await loop_margins()
        meter = LagMeter()
        async with open_actor_system() as system, anyio.create_task_group() as tg:
            await tg.start(meter.run)
            total = [0]
            pairs = []
            for i in range(20):
                left = system.spawn(lambda: PingPong(total), name=f"left-{i}")
                right = system.spawn(lambda: PingPong(total), name=f"right-{i}")
                left.tell(("peer", right))
                right.tell(("peer", left))
                pairs.append((left, right))
            async with open_loop_watchdog(system, threshold=margins.threshold, interval=INTERVAL) as watchdog:
                for left, _ in pairs:
                    left.tell(20_000)
                # Busy until this much work is done, however long a loaded machine takes (not for a fixed time,
                # in which a loaded machine does less).
                await wait_for(lambda: total[0] >= 40_000, within=60.0)
                bounced = sum([await left.ask("count") + await right.ask("count") for left, right in pairs])
            tg.cancel_scope.cancel()
        assert bounced >= 40_000  # the loop really was busy all along, and every bounce was an actor's
        # No actor named (none is ever blamed for a busy loop), and nothing reported but what the loop really
        # suffered: a report needs a lag past the threshold, which the independent meter saw too (an OS stall on
        # a loaded machine; on a quiet one there is none, and no report).
        assert named_blocks(watchdog) == []
        if watchdog.blocks:
            assert meter.worst > margins.threshold - INTERVAL, (watchdog.history(), meter.worst)
            assert max(b.seconds for b in watchdog.history()) <= meter.worst + INTERVAL, meter.worst
        else:
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

        margins = await loop_margins()
        async with (
            open_actor_system() as system,
            open_loop_watchdog(system, threshold=margins.threshold, interval=INTERVAL, on_block=broken) as watchdog,
        ):
            time.sleep(margins.block)  # noqa: ASYNC251  # a deliberate block
            await wait_for(lambda: watchdog.blocks >= 1)
            first = watchdog.blocks
            time.sleep(margins.block)  # noqa: ASYNC251  # and another one, after the observer failed
            await wait_for(lambda: watchdog.blocks > first)
        # Every block reported reached the observer, also after it raised (a loaded machine may add lags).
        assert len(calls) == watchdog.blocks >= 2
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
