from __future__ import annotations

import gc
import weakref

import anyio
import anyio.lowlevel
import pytest

from actors import ExitKind, HandlerTimeout, open_actor_system
from supervisors import (
    AutoShutdown,
    ChildBlockedLoop,
    ChildRunning,
    ChildStartError,
    ChildState,
    DuplicateChild,
    InvalidChildSpec,
    Restart,
    Shutdown,
    Strategy,
    SupervisorEventKind,
    UnknownChild,
    start_supervisor,
    supervisor_spec,
)
from tests.behaviour._supervisor_kit import (
    FAILED,
    RESTARTED,
    SHUT_DOWN,
    STARTED,
    Journal,
    events,
    kinds,
    serials,
    wait_for_event,
    wait_until,
    worker,
)
from tests.conftest import virtual_time

pytestmark = pytest.mark.anyio


@virtual_time
class TestShutdown:
    async def test_shutdown_child_ignoring_graceful_stop_cancelled_after_timeout(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system,
                name="sup",
                children=[
                    worker(journal, "stubborn", stop_delay=100.0, shutdown=2.0),
                    worker(journal, "tidy", stop_delay=1.0, shutdown=2.0),
                ],
            )
            stubborn, tidy = system.lookup("sup/stubborn"), system.lookup("sup/tidy")
            started = anyio.current_time()
            await sup.terminate_child("stubborn")
            assert 2.0 <= anyio.current_time() - started < 2.1
            assert journal.count("stop", "stubborn") == 1  # it was asked...
            assert journal.count("stopped", "stubborn") == 0  # ...never finished...
            assert journal.count("killed", "stubborn") == 1  # ...and was cancelled
            reason = stubborn.stop_reason
            assert reason is not None
            assert reason.kind is ExitKind.KILLED
            assert "shutdown timeout of 2.0 s" in reason.detail
            assert "shutdown timeout of 2.0 s" in events(sup, SHUT_DOWN, "stubborn")[-1].reason
            # A child that stops within its timeout ends gracefully.
            await sup.terminate_child("tidy")
            assert tidy.stop_reason is not None
            assert tidy.stop_reason.kind is ExitKind.SHUTDOWN
            assert journal.count("stopped", "tidy") == 1

    async def test_shutdown_brutal_child_cancelled_at_once_on_stop_skipped(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system, name="sup", children=[worker(journal, "w", stop_delay=100.0, shutdown=Shutdown.BRUTAL)]
            )
            ref = system.lookup("sup/w")
            started = anyio.current_time()
            await sup.terminate_child("w")
            assert anyio.current_time() - started < 0.01
            assert journal.count("stopped", "w") == 0  # its graceful stop never completed
            assert journal.count("killed", "w") == 1
            assert ref.stop_reason is not None
            assert ref.stop_reason.kind is ExitKind.KILLED
            assert "brutal" in ref.stop_reason.detail

    async def test_shutdown_dynamic_children_stop_in_parallel_total_is_max_not_sum(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(system, name="sup", children=[worker(journal, "s")])
            for timeout in (1.0, 2.0, 3.0):
                await sup.start_child(worker(journal, f"d{timeout:.0f}", stop_delay=100.0, shutdown=timeout))
            started = anyio.current_time()
            await sup.stop()
            assert 3.0 <= anyio.current_time() - started < 3.5  # max(1, 2, 3), not 1 + 2 + 3
            assert sorted(journal.of("killed")) == ["d1", "d2", "d3"]
            assert journal.of("stopped") == ["s"]

    async def test_shutdown_dynamic_children_each_cancelled_at_its_own_timeout(self) -> None:
        # Regression guard for the single-task parallel stop: children are awaited in deadline order, so a child
        # with a short timeout listed after one with a long timeout must still be cancelled at its own deadline.
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(system, name="sup")
            for child_id, timeout in (("late", 3.0), ("early", 1.0), ("tidy", 5.0), ("middle", 2.0)):
                await sup.start_child(
                    worker(journal, child_id, stop_delay=0.5 if child_id == "tidy" else 100.0, shutdown=timeout)
                )
            await sup.start_child(worker(journal, "brutal", stop_delay=100.0, shutdown=Shutdown.BRUTAL))
            started = anyio.current_time()
            await sup.stop()
            killed_after = {child: round(at - started, 1) for what, child, at, _ in journal.entries if what == "killed"}
            assert killed_after == {"brutal": 0.0, "early": 1.0, "middle": 2.0, "late": 3.0}
            assert [round(at - started, 1) for at in journal.times("stopped", "tidy")] == [0.5]
            reasons = {e.child_id: e.reason for e in events(sup, SHUT_DOWN) if e.child_id is not None}
            assert "shutdown timeout of 1.0 s" in reasons["early"]
            assert "shutdown timeout of 3.0 s" in reasons["late"]
            assert "brutal" in reasons["brutal"]
            assert reasons["tidy"].startswith("shutdown")
            assert system.names() == []

    async def test_shutdown_many_dynamic_children_all_asked_before_any_finishes(self) -> None:
        # More children than one wave of stop requests (the supervisor asks a few hundred at a time and lets them
        # run in between): the waves must not serialise the stops.
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(system, name="sup")
            for i in range(600):
                await sup.start_child(worker(journal, f"d{i}", stop_delay=1.0, shutdown=10.0), timeout=None)
            mark = journal.mark()
            started = anyio.current_time()
            await sup.stop()
            assert 1.0 <= anyio.current_time() - started < 1.1  # one stop_delay, not one per wave
            observed = journal.since(mark, "stop", "stopped")
            assert {what for what, _ in observed[:600]} == {"stop"}
            assert sorted(child for _, child in observed[600:]) == sorted(f"d{i}" for i in range(600))
            assert journal.of("killed") == []
            assert system.names() == []

    async def test_stopped_supervisor_and_children_freed_by_reference_counting_alone(self) -> None:
        # Regression: each stopped child (and the supervisor with its child records) was cyclic garbage, left in
        # the oldest generation for a full collection; with 10k children those made stopping superlinear.
        journal = Journal()
        gc.disable()
        try:
            async with open_actor_system() as system:
                sup = await start_supervisor(system, name="sup", children=[worker(journal, "static")])
                for i in range(5):
                    # No timeout: an answered ask with a deadline stays in the deadline heap (and keeps its reply,
                    # the child's ref) until the heap is next compacted.
                    await sup.start_child(worker(journal, f"dynamic-{i}"), timeout=None)
                names = system.names()
                instances = [weakref.ref(system.lookup(name).current_instance) for name in names]
                refs = [weakref.ref(system.lookup(name)) for name in names]
                del names
                await sup.stop()
                del sup
                for _ in range(20):
                    await anyio.lowlevel.checkpoint()
                assert [handle() for handle in instances + refs] == [None] * 14  # the supervisor and 6 children
        finally:
            gc.enable()

    async def test_shutdown_static_children_stop_one_after_another_total_is_sum(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system,
                name="sup",
                children=[worker(journal, f"s{t}", stop_delay=100.0, shutdown=float(t)) for t in (1, 2, 3)],
            )
            started = anyio.current_time()
            await sup.stop()
            assert 6.0 <= anyio.current_time() - started < 6.5
            assert journal.of("killed") == ["s3", "s2", "s1"]

    async def test_stop_order_is_reverse_of_start_order_dynamic_first(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system, name="sup", children=[worker(journal, c, stop_delay=0.5) for c in "abc"]
            )
            for c in "de":
                await sup.start_child(worker(journal, c, stop_delay=0.5))
            assert journal.of("start") == ["a", "b", "c", "d", "e"]
            mark = journal.mark()
            await sup.stop()
            observed = journal.since(mark, "stop", "stopped")
            # Dynamic children: both asked to stop before either finished (in parallel).
            assert sorted(observed[:2]) == [("stop", "d"), ("stop", "e")]
            assert sorted(observed[2:4]) == [("stopped", "d"), ("stopped", "e")]
            # Static children: newest first, each finished before the next is asked.
            assert observed[4:] == [
                ("stop", "c"),
                ("stopped", "c"),
                ("stop", "b"),
                ("stopped", "b"),
                ("stop", "a"),
                ("stopped", "a"),
            ]
            assert system.names() == []
            assert [e.child_id for e in events(sup, SHUT_DOWN)][-4:] == ["c", "b", "a", None]


@virtual_time
class TestAdminCalls:
    async def test_admin_duplicate_id_refused_original_untouched(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(system, name="sup", children=[worker(journal, "a")])
            before = await serials(sup, "a")
            with pytest.raises(DuplicateChild):
                await sup.start_child(worker(journal, "a"))
            await sup.start_child(worker(journal, "d"))
            with pytest.raises(DuplicateChild):
                await sup.start_child(worker(journal, "d"))
            assert await serials(sup, "a") == before
            assert [c.id for c in await sup.which_children()] == ["a", "d"]
            assert journal.of("start") == ["a", "d"]

    async def test_admin_unknown_id_refused_terminate_unknown_is_a_no_op(self) -> None:
        async with open_actor_system() as system:
            sup = await start_supervisor(system, name="sup")
            with pytest.raises(UnknownChild):
                await sup.restart_child("nope")
            with pytest.raises(UnknownChild):
                await sup.delete_child("nope")
            await sup.terminate_child("nope")
            assert sup.ref.is_alive

    async def test_admin_delete_or_restart_running_child_refused(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(system, name="sup", children=[worker(journal, "a")])
            with pytest.raises(ChildRunning):
                await sup.delete_child("a")
            with pytest.raises(ChildRunning):
                await sup.restart_child("a")
            assert [(c.id, c.state) for c in await sup.which_children()] == [("a", ChildState.RUNNING)]
            assert journal.count("start", "a") == 1

    async def test_admin_terminate_idempotent_then_restart_fresh_ref_then_delete(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(system, name="sup", children=[worker(journal, "a")])
            old = system.lookup("sup/a")
            await sup.terminate_child("a")
            await sup.terminate_child("a")
            assert journal.count("stop", "a") == 1
            assert [(c.id, c.state, c.ref) for c in await sup.which_children()] == [("a", ChildState.STOPPED, None)]
            assert not old.is_alive
            new = await sup.restart_child("a")
            assert new is not old
            assert new.is_alive
            assert system.lookup("sup/a") is new
            with pytest.raises(ChildRunning):
                await sup.delete_child("a")
            await sup.terminate_child("a")
            await sup.delete_child("a")
            assert await sup.which_children() == []
            with pytest.raises(UnknownChild):
                await sup.delete_child("a")
            assert system.names() == ["sup"]

    async def test_admin_terminate_temporary_child_removes_it(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(system, name="sup", children=[worker(journal, "t", restart=Restart.TEMPORARY)])
            await sup.terminate_child("t")
            assert await sup.which_children() == []
            await sup.terminate_child("t")  # still a no-op

    async def test_admin_start_child_invalid_or_failing_refused_nothing_left(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(system, name="sup")
            with pytest.raises(InvalidChildSpec, match="significant"):
                await sup.start_child(worker(journal, "s", restart=Restart.TRANSIENT, significant=True))
            with pytest.raises(ChildStartError):
                await sup.start_child(worker(journal, "f", start_fails=lambda n: True))
            assert await sup.which_children() == []
            assert system.names() == ["sup"]

    async def test_admin_restart_child_start_fails_refused_no_half_made_ref(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system, name="sup", children=[worker(journal, "a", start_fails=lambda n: n == 2)]
            )
            await sup.terminate_child("a")
            with pytest.raises(ChildStartError):
                await sup.restart_child("a")
            assert [(c.state, c.ref) for c in await sup.which_children()] == [(ChildState.STOPPED, None)]
            assert system.names() == ["sup"]
            ref = await sup.restart_child("a")  # the third attempt starts
            assert await ref.ask("serial") > 0

    async def test_admin_count_children_by_kind_and_state(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sub = supervisor_spec("sub", children=[worker(journal, "x")])
            sup = await start_supervisor(system, name="sup", children=[worker(journal, "a"), sub])
            await sup.start_child(worker(journal, "d"))
            await sup.terminate_child("a")
            counts = await sup.count_children()
            assert (counts.specs, counts.active, counts.supervisors, counts.workers) == (3, 2, 1, 2)
            assert (counts.restarting, counts.detached) == (0, 0)


@virtual_time
class TestAutoShutdown:
    async def test_auto_shutdown_any_significant_transient_exits_supervisor_stops(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system,
                name="sup",
                auto_shutdown=AutoShutdown.ANY_SIGNIFICANT,
                children=[worker(journal, "a"), worker(journal, "s", restart=Restart.TRANSIENT, significant=True)],
            )
            system.lookup("sup/s").tell("exit")
            await wait_until(lambda: not sup.ref.is_alive, what="auto shutdown")
            assert sup.ref.stop_reason is not None
            assert sup.ref.stop_reason.kind is ExitKind.NORMAL
            assert journal.of("stop") == ["s", "a"]
            assert any(e.reason == "auto_shutdown" for e in events(sup, SHUT_DOWN, "s"))
            assert system.names() == []

    async def test_auto_shutdown_any_significant_temporary_crash_triggers(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system,
                name="sup",
                auto_shutdown=AutoShutdown.ANY_SIGNIFICANT,
                children=[worker(journal, "a"), worker(journal, "t", restart=Restart.TEMPORARY, significant=True)],
            )
            system.lookup("sup/t").tell("boom")
            await wait_until(lambda: not sup.ref.is_alive, what="auto shutdown")
            assert journal.count("start", "t") == 1

    async def test_auto_shutdown_significant_transient_crash_restarted_no_shutdown(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system,
                name="sup",
                auto_shutdown=AutoShutdown.ANY_SIGNIFICANT,
                children=[worker(journal, "s", restart=Restart.TRANSIENT, significant=True)],
            )
            system.lookup("sup/s").tell("boom")
            await wait_for_event(sup, RESTARTED, "s")
            assert sup.ref.is_alive

    async def test_auto_shutdown_all_significant_waits_for_the_last_one(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system,
                name="sup",
                auto_shutdown=AutoShutdown.ALL_SIGNIFICANT,
                children=[
                    worker(journal, "a"),
                    worker(journal, "s1", restart=Restart.TRANSIENT, significant=True),
                    worker(journal, "s2", restart=Restart.TRANSIENT, significant=True),
                ],
            )
            system.lookup("sup/s1").tell("exit")
            await wait_for_event(sup, SHUT_DOWN, "s1")
            assert sup.ref.is_alive
            assert {c.id: c.state for c in await sup.which_children()}["s1"] is ChildState.STOPPED
            system.lookup("sup/s2").tell("exit")
            await wait_until(lambda: not sup.ref.is_alive, what="auto shutdown")
            assert journal.of("stop") == ["s1", "s2", "a"]

    async def test_auto_shutdown_terminate_child_does_not_trigger(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system,
                name="sup",
                auto_shutdown=AutoShutdown.ANY_SIGNIFICANT,
                children=[worker(journal, "a"), worker(journal, "s", restart=Restart.TRANSIENT, significant=True)],
            )
            await sup.terminate_child("s")
            await anyio.sleep(1.0)
            assert sup.ref.is_alive
            assert [c.state for c in await sup.which_children()] == [ChildState.RUNNING, ChildState.STOPPED]

    async def test_auto_shutdown_sibling_casualty_does_not_trigger(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system,
                name="sup",
                strategy=Strategy.ONE_FOR_ALL,
                auto_shutdown=AutoShutdown.ANY_SIGNIFICANT,
                children=[worker(journal, "a"), worker(journal, "t", restart=Restart.TEMPORARY, significant=True)],
            )
            system.lookup("sup/a").tell("boom")
            await wait_for_event(sup, RESTARTED, "a")
            await anyio.sleep(1.0)
            assert sup.ref.is_alive
            assert [c.id for c in await sup.which_children()] == ["a"]
            assert journal.count("stop", "t") == 1


@virtual_time
class TestHangDetection:
    async def test_handler_past_deadline_cancelled_counted_as_failure_restarted(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system, name="sup", children=[worker(journal, "w", handler_timeout=1.0), worker(journal, "s")]
            )
            before = await serials(sup, "w", "s")
            started = anyio.current_time()
            system.lookup("sup/w").tell(("hang", 60.0))
            failed = await wait_for_event(sup, FAILED, "w")
            assert failed.at - started == pytest.approx(1.0, abs=0.01)
            assert HandlerTimeout.__name__ in failed.reason
            await wait_for_event(sup, RESTARTED, "w")
            after = await serials(sup, "w", "s")
            assert after["w"] != before["w"]
            assert after["s"] == before["s"]

    async def test_blocked_loop_report_fails_the_child_and_restarts_it(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(system, name="sup", children=[worker(journal, "w")])
            before = await serials(sup, "w")
            sup.ref.tell(ChildBlockedLoop(child_id="w", seconds=1.5))
            await wait_for_event(sup, RESTARTED, "w")
            assert kinds(sup, "w") == [STARTED, SupervisorEventKind.BLOCKED_LOOP, FAILED, STARTED, RESTARTED]
            assert "blocked the event loop for 1.500 s" in events(sup, FAILED, "w")[0].reason
            assert await serials(sup, "w") != before

    # Regression: a loop-blocking report about a temporary child went straight to a restart plan, which refuses
    # temporary children, and the supervisor itself crashed.
    async def test_blocked_loop_report_temporary_child_removed_supervisor_stays(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system, name="sup", children=[worker(journal, "a"), worker(journal, "t", restart=Restart.TEMPORARY)]
            )
            t = system.lookup("sup/t")
            sup.ref.tell(ChildBlockedLoop(child_id="t", seconds=1.5))
            await wait_for_event(sup, FAILED, "t")
            assert [c.id for c in await sup.which_children()] == ["a"]
            assert sup.ref.is_alive
            assert not t.is_alive
            assert journal.count("start", "t") == 1


class TestConstruction:
    async def test_start_supervisor_bad_argument_raises_the_validation_error(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            with pytest.raises(InvalidChildSpec, match="significant"):
                await start_supervisor(
                    system, name="sup", children=[worker(journal, "s", restart=Restart.TRANSIENT, significant=True)]
                )
            with pytest.raises(ValueError, match="intensity"):
                await start_supervisor(system, name="sup", intensity=-1)
            with pytest.raises(DuplicateChild):
                await start_supervisor(system, name="sup", children=[worker(journal, "a"), worker(journal, "a")])
            assert system.names() == []
            assert journal.entries == []

    async def test_supervisor_spec_bad_argument_raises_at_once(self) -> None:
        with pytest.raises(ValueError, match="period"):
            supervisor_spec("sub", period=0)
