from __future__ import annotations

import anyio
import pytest

from actors import MailboxSpec, RefState, open_actor_system
from supervisors import (
    Backoff,
    ChildState,
    RestartIntensityExceeded,
    Shutdown,
    Strategy,
    SupervisorRef,
    start_supervisor,
    supervisor_spec,
)
from tests.behaviour._supervisor_kit import (
    DETACHED,
    ESCALATED,
    FAILED,
    REATTACHED,
    RESTART_SCHEDULED,
    RESTARTED,
    STARTED,
    Journal,
    after_first,
    always,
    events,
    kinds,
    serials,
    wait_for_event,
    wait_until,
    worker,
)
from tests.conftest import virtual_time

pytestmark = pytest.mark.anyio


def restart_gaps(sup: SupervisorRef, child_id: str) -> list[float]:
    """Virtual seconds from each failure of a child to its replacement instance, in order."""
    failed = [e.at for e in events(sup, FAILED, child_id)]
    restarted = [e.at for e in events(sup, RESTARTED, child_id)]
    return [up - down for down, up in zip(failed, restarted, strict=False)]


def cooldowns(sup: SupervisorRef, child_id: str) -> list[float]:
    """Virtual seconds from each detach of a child to its re-attach, in order."""
    detached = [e.at for e in events(sup, DETACHED, child_id)]
    reattached = [e.at for e in events(sup, REATTACHED, child_id)]
    return [up - down for down, up in zip(detached, reattached, strict=False)]


@virtual_time
class TestDetach:
    async def test_detach_crash_loop_non_critical_detached_parent_and_siblings_untouched(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            # one_for_all and intensity=1: had the crash loop touched the siblings or charged the supervisor's
            # budget, a, c would have new instances and the supervisor would have escalated.
            sup = await start_supervisor(
                system,
                name="sup",
                strategy=Strategy.ONE_FOR_ALL,
                intensity=1,
                children=[
                    worker(journal, "a"),
                    worker(journal, "m", crash_at_start=always, critical=False, intensity=2, detach_cooldown=10),
                    worker(journal, "c"),
                ],
            )
            before = await serials(sup, "a", "c")
            m = system.lookup("sup/m")
            await wait_for_event(sup, DETACHED, "m")
            assert await serials(sup, "a", "c") == before
            assert journal.of("stop").count("a") == journal.of("stop").count("c") == 0
            assert kinds(sup, "m") == [STARTED, FAILED] + [STARTED, RESTARTED, FAILED] * 2 + [DETACHED]
            assert events(sup, ESCALATED) == []
            children = {c.id: c for c in await sup.which_children()}
            assert (children["m"].state, children["m"].ref) == (ChildState.DETACHED, None)
            health = await sup.health()
            assert (health.status, health.detached, health.restarting) == ("degraded", ("m",), ())
            counts = await sup.count_children()
            assert (counts.active, counts.detached) == (2, 1)
            # Its ref stays the same object, but what is told to it now is a dead letter, counted.
            assert m.state == RefState.DETACHED
            dead_before = system.dead_letters.count("detached")
            for i in range(3):
                m.tell(i)
            assert system.dead_letters.count("detached") == dead_before + 3
            assert m.statistics().dead_lettered >= 3
            # The supervisor's own budget is intact: a critical child may still fail once.
            system.lookup("sup/a").tell("boom")
            await wait_for_event(sup, RESTARTED, "c")
            assert sup.ref.is_alive

    async def test_detach_probe_fails_cooldown_doubles_up_to_its_cap(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system,
                name="sup",
                children=[
                    worker(journal, "s"),
                    worker(
                        journal,
                        "m",
                        crash_at_start=always,
                        critical=False,
                        intensity=1,
                        detach_cooldown=10,
                        max_detach_cooldown=30,
                    ),
                ],
            )
            before = await serials(sup, "s")
            await wait_for_event(sup, REATTACHED, "m", count=4)
            await wait_for_event(sup, DETACHED, "m", count=5)
            # Each half-open probe crashed at once, so each detach waited twice as long, capped at 30 s.
            assert cooldowns(sup, "m") == pytest.approx([10.0, 20.0, 30.0, 30.0], abs=0.01)
            assert [e.detail for e in events(sup, DETACHED, "m")] == [
                f"re-attach in {c:.3f} s" for c in (10.0, 20.0, 30.0, 30.0, 30.0)
            ]
            # A failed probe detaches at once: one FAILED per probe, no restart spent on it.
            assert kinds(sup, "m")[-3:] == [REATTACHED, FAILED, DETACHED]
            assert await serials(sup, "s") == before
            assert sup.ref.is_alive

    async def test_detach_probe_passes_child_back_in_service_cooldown_reset(self) -> None:
        journal = Journal()
        crashing = [True]
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system,
                name="sup",
                children=[
                    worker(
                        journal,
                        "m",
                        crash_at_start=lambda: crashing[0],
                        critical=False,
                        intensity=1,
                        period=5.0,
                        detach_cooldown=10,
                    )
                ],
            )
            m = system.lookup("sup/m")
            detached = await wait_for_event(sup, DETACHED, "m")
            crashing[0] = False  # the fault clears while it is detached
            m.tell("lost")  # a dead letter
            reattached = await wait_for_event(sup, REATTACHED, "m")
            assert reattached.at - detached.at == pytest.approx(10.0, abs=0.01)
            # Back in service on the same ref: tells queue and reach the new instance again.
            m.tell("kept")
            assert await m.ask("seen") == ["kept"]
            await anyio.sleep(6.0)  # longer than period: the half-open probe passes
            health = await sup.health()
            assert (health.status, health.detached) == ("healthy", ())
            # It fails again later: a fresh budget, and the first cool-down again (not a doubled one).
            crashing[0] = True
            m.tell("boom")
            second = await wait_for_event(sup, DETACHED, "m", count=2)
            assert second.detail == "re-attach in 10.000 s"
            history = kinds(sup, "m")
            after_probe = history[history.index(REATTACHED) + 1 :]
            # Not detached at the first failure (the probe had passed): one restart (intensity=1), then detached.
            assert after_probe == [FAILED, STARTED, RESTARTED, FAILED, DETACHED]

    # Regression: a detached child was swept into a sibling's one_for_all restart; its ref still held its name,
    # so the supervisor died with ActorNameTaken.
    async def test_detach_sibling_restart_leaves_detached_child_on_its_own_cooldown(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system,
                name="sup",
                strategy=Strategy.ONE_FOR_ALL,
                intensity=1,
                children=[
                    worker(journal, "a"),
                    worker(journal, "m", crash_at_start=always, critical=False, intensity=0, detach_cooldown=10),
                    worker(journal, "c"),
                ],
            )
            detached = await wait_for_event(sup, DETACHED, "m")
            system.lookup("sup/a").tell("boom")
            await wait_for_event(sup, RESTARTED, "c")
            assert {c.id: c.state for c in await sup.which_children()}["m"] is ChildState.DETACHED
            assert journal.count("attempt", "m") == 1
            reattached = await wait_for_event(sup, REATTACHED, "m")
            assert reattached.at - detached.at == pytest.approx(10.0, abs=0.01)
            assert sup.ref.is_alive

    async def test_detach_terminate_detached_child_stops_it_for_good(self) -> None:
        journal = Journal()
        crashing = [True]
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system,
                name="sup",
                children=[
                    worker(
                        journal,
                        "m",
                        crash_at_start=lambda: crashing[0],
                        critical=False,
                        intensity=0,
                        detach_cooldown=10,
                    )
                ],
            )
            m = system.lookup("sup/m")
            await wait_for_event(sup, DETACHED, "m")
            await sup.terminate_child("m")
            assert m.state == RefState.STOPPED
            await anyio.sleep(30.0)
            assert events(sup, REATTACHED, "m") == []
            assert [c.state for c in await sup.which_children()] == [ChildState.STOPPED]
            crashing[0] = False
            fresh = await sup.restart_child("m")
            assert fresh is not m
            assert (await sup.health()).status == "healthy"

    async def test_detach_non_critical_sub_supervisor_branch_detached_root_untouched(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            # The branch gives up at the first crash; as a non-critical child of root, it is then detached.
            branch = supervisor_spec(
                "branch",
                intensity=0,
                children=[worker(journal, "w", crash_at_start=always)],
                critical=False,
                detach_cooldown=10,
            )
            root = await start_supervisor(system, name="root", intensity=0, children=[worker(journal, "r"), branch])
            await wait_for_event(root, DETACHED, "branch")
            assert root.ref.is_alive
            assert journal.count("start", "r") == 1
            assert "root/branch/w" not in system.names()
            assert (await root.health()).detached == ("branch",)

    # Regression: a cancelled supervisor left its detached children's refs registered, so its restart failed
    # with ActorNameTaken.
    async def test_detach_sub_supervisor_killed_and_restarted_with_detached_child(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sub = supervisor_spec(
                "sub",
                children=[worker(journal, "m", crash_at_start=always, critical=False, intensity=0, detach_cooldown=60)],
                shutdown=Shutdown.BRUTAL,
            )
            root = await start_supervisor(
                system, name="root", strategy=Strategy.ONE_FOR_ALL, intensity=1, children=[sub, worker(journal, "a")]
            )
            await wait_for_event(root, DETACHED, "m")
            system.lookup("root/a").tell("boom")
            await wait_for_event(root, RESTARTED, "a")
            await wait_for_event(root, DETACHED, "m", count=2)  # the new sub started m afresh
            assert root.ref.is_alive
            assert [e.child_id for e in events(root, RESTARTED)] == ["sub", "a"]


@virtual_time
class TestBackoff:
    async def test_backoff_delays_double_from_min_capped_at_max_with_jitter(self) -> None:
        journal = Journal()
        backoff = Backoff(min=1.0, max=8.0, jitter=0.25, reset_after=100.0)
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system,
                name="sup",
                intensity=100,
                seed=7,
                children=[worker(journal, "w", crash_at_start=always, backoff=backoff)],
            )
            await wait_for_event(sup, RESTARTED, "w", count=7)
            gaps = restart_gaps(sup, "w")[:7]
            for k, gap in enumerate(gaps):
                base = min(1.0 * 2**k, 8.0)
                assert base * 0.75 - 0.01 <= gap <= min(base * 1.25, 8.0) + 0.01, (k, gaps)
            assert len(set(gaps)) > 1  # jittered, not a fixed schedule
            scheduled = events(sup, RESTART_SCHEDULED, "w")
            assert [e.detail for e in scheduled[:7]] == [f"in {gap:.3f} s" for gap in gaps]
            # The 7th instance crashed at once too: the child now waits out its 8th delay, shown as restarting.
            health = await sup.health()
            assert (health.status, health.restarting) == ("degraded", ("w",))

    async def test_backoff_quiet_period_resets_delay_to_min(self) -> None:
        journal = Journal()
        backoff = Backoff(min=1.0, max=60.0, jitter=0.0, reset_after=10.0)
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system, name="sup", intensity=100, children=[worker(journal, "w", backoff=backoff)]
            )
            w = system.lookup("sup/w")
            for n in range(1, 4):  # each crash right after the restart: 1, 2, 4 s
                w.tell("boom")
                await wait_for_event(sup, RESTARTED, "w", count=n)
            await anyio.sleep(20.0)  # up for longer than reset_after
            w.tell("boom")
            await wait_for_event(sup, RESTARTED, "w", count=4)
            assert restart_gaps(sup, "w") == pytest.approx([1.0, 2.0, 4.0, 1.0], abs=0.01)

    async def test_backoff_max_restarts_reached_critical_child_escalates(self) -> None:
        journal = Journal()
        backoff = Backoff(min=1.0, jitter=0.0, max_restarts=2)
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system,
                name="sup",
                intensity=100,
                children=[worker(journal, "s"), worker(journal, "w", crash_at_start=always, backoff=backoff)],
            )
            await wait_until(lambda: not sup.ref.is_alive, what="escalation")
            assert len(events(sup, RESTARTED, "w")) == 2
            escalated = events(sup, ESCALATED, "w")
            assert [e.detail for e in escalated] == ["backoff max_restarts reached"]
            assert sup.ref.stop_reason is not None
            assert isinstance(sup.ref.stop_reason.exception, RestartIntensityExceeded)
            assert system.names() == []

    async def test_backoff_max_restarts_reached_non_critical_child_detached(self) -> None:
        journal = Journal()
        backoff = Backoff(min=1.0, jitter=0.0, max_restarts=2)
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system,
                name="sup",
                children=[worker(journal, "w", crash_at_start=always, backoff=backoff, critical=False, intensity=100)],
            )
            await wait_for_event(sup, DETACHED, "w")
            assert len(events(sup, RESTARTED, "w")) == 2
            assert sup.ref.is_alive

    async def test_backoff_messages_told_while_waiting_queued_for_next_instance_overflow_counted(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system,
                name="sup",
                children=[worker(journal, "w", backoff=Backoff(min=5.0, jitter=0.0), mailbox=MailboxSpec(capacity=5))],
            )
            w = system.lookup("sup/w")
            before = await w.ask("serial")
            w.tell("boom")
            await wait_for_event(sup, RESTART_SCHEDULED, "w")
            assert w.state == RefState.RESTARTING
            for i in range(8):
                w.tell(i)
            stats = w.statistics()
            assert (stats.queued, stats.dropped) == (5, {"drop_newest": 3})
            await wait_for_event(sup, RESTARTED, "w")
            assert await w.ask("seen") == [0, 1, 2, 3, 4]
            assert await w.ask("serial") != before
            stats = w.statistics()
            assert stats.sent == stats.processed + stats.dropped_total + stats.dead_lettered + stats.queued

    async def test_backoff_failing_restarts_show_restarting_then_terminate_stops_them(self) -> None:
        journal = Journal()
        backoff = Backoff(min=1.0, max=4.0, jitter=0.0)
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system,
                name="sup",
                intensity=100,
                children=[worker(journal, "a"), worker(journal, "w", start_fails=after_first, backoff=backoff)],
            )
            system.lookup("sup/w").tell("boom")
            await wait_for_event(sup, FAILED, "w", count=3)  # the crash, then two failed re-starts
            assert all(e.reason.startswith("error: restart failed") for e in events(sup, FAILED, "w")[1:])
            children = {c.id: c for c in await sup.which_children()}
            assert (children["w"].state, children["w"].ref) == (ChildState.RESTARTING, None)
            counts = await sup.count_children()
            assert (counts.active, counts.restarting) == (1, 1)
            health = await sup.health()
            assert (health.status, health.restarting) == ("degraded", ("w",))
            await sup.terminate_child("w")
            attempts = journal.count("attempt", "w")
            seen = len(sup.events.history())
            await anyio.sleep(60.0)
            assert journal.count("attempt", "w") == attempts  # the pending restart was forgotten
            assert [e.child_id for e in sup.events.history()[seen:]] == []
            assert {c.id: c.state for c in await sup.which_children()}["w"] is ChildState.STOPPED
            assert (await sup.health()).status == "healthy"

    async def test_backoff_failing_restarts_never_block_supervisor_shutdown(self) -> None:
        journal = Journal()
        backoff = Backoff(min=30.0, max=300.0, jitter=0.0)
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system,
                name="sup",
                intensity=100,
                children=[worker(journal, "a"), worker(journal, "w", start_fails=after_first, backoff=backoff)],
            )
            system.lookup("sup/w").tell("boom")
            await wait_for_event(sup, RESTART_SCHEDULED, "w", count=2)
            started = anyio.current_time()
            await sup.stop()
            assert anyio.current_time() - started < 0.01
            assert system.names() == []
            assert journal.of("stop") == ["w", "a"]
