from __future__ import annotations

import anyio
import pytest

from actors import ActorStartError, ExitKind, open_actor_system
from supervisors import (
    ChildState,
    Restart,
    RestartIntensityExceeded,
    Strategy,
    SupervisorRef,
    start_supervisor,
    supervisor_spec,
)
from tests.behaviour._supervisor_kit import (
    DETACHED,
    ESCALATED,
    FAILED,
    RESTARTED,
    SHUT_DOWN,
    STARTED,
    Journal,
    after_first,
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
class TestStrategies:
    async def test_one_for_one_crash_only_crashed_child_gets_new_instance(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system, name="sup", strategy=Strategy.ONE_FOR_ONE, children=[worker(journal, c) for c in "abc"]
            )
            before = await serials(sup, "a", "b", "c")
            a, b, c = (system.lookup(f"sup/{x}") for x in "abc")
            b.tell("boom")
            for i in range(3):
                a.tell(i)
                c.tell(i)
            await wait_for_event(sup, RESTARTED, "b")
            after = await serials(sup, "a", "b", "c")
            assert after["a"] == before["a"]
            assert after["c"] == before["c"]
            assert after["b"] != before["b"]
            # The siblings kept processing through the crash, in order.
            assert await a.ask("seen") == [0, 1, 2]
            assert await c.ask("seen") == [0, 1, 2]
            assert journal.of("stop") == ["b"]
            assert system.lookup("sup/b") is b  # the ref is stable across the restart
            assert kinds(sup, "b") == [STARTED, FAILED, STARTED, RESTARTED]
            assert kinds(sup, "a") == [STARTED]

    async def test_one_for_all_crash_stops_all_in_reverse_restarts_in_start_order(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system, name="sup", strategy=Strategy.ONE_FOR_ALL, children=[worker(journal, c) for c in "abcd"]
            )
            before = await serials(sup, "a", "b", "c", "d")
            mark = journal.mark()
            system.lookup("sup/b").tell("boom")
            await wait_for_event(sup, RESTARTED, "d")
            # b's own on_stop runs as it crashes; then the others stop newest first and all start in order.
            assert journal.since(mark, "stop", "start") == [
                ("stop", "b"),
                ("stop", "d"),
                ("stop", "c"),
                ("stop", "a"),
                ("start", "a"),
                ("start", "b"),
                ("start", "c"),
                ("start", "d"),
            ]
            after = await serials(sup, "a", "b", "c", "d")
            assert all(after[c] != before[c] for c in "abcd")
            assert [e.child_id for e in events(sup, RESTARTED)] == ["a", "b", "c", "d"]
            assert [e.child_id for e in events(sup, FAILED)] == ["b"]

    # Regression: a sibling that crashed while a one_for_all restart was stopping the others was restarted by the
    # plan, then its stale exit notice was taken for a crash of the new instance and the supervisor died.
    async def test_one_for_all_sibling_crashing_during_the_restart_restarted_once(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system,
                name="sup",
                strategy=Strategy.ONE_FOR_ALL,
                intensity=5,
                children=[worker(journal, "a"), worker(journal, "b"), worker(journal, "c", stop_delay=1.0)],
            )
            b = system.lookup("sup/b")
            b.tell(("hang", 0.5))
            b.tell("boom")  # b crashes at 0.5 s, while the supervisor waits 1 s for c to stop
            system.lookup("sup/a").tell("boom")
            await wait_for_event(sup, RESTARTED, "c")
            await anyio.sleep(5.0)
            assert sup.ref.is_alive
            assert [e.child_id for e in events(sup, FAILED)] == ["a"]  # OTP: b's exit is absorbed by the restart
            assert [(c.state, c.restarts) for c in await sup.which_children()] == [(ChildState.RUNNING, 1)] * 3
            b.tell("after")
            assert await b.ask("seen") == ["after"]

    async def test_rest_for_one_crash_restarts_failed_and_later_earlier_untouched(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system, name="sup", strategy=Strategy.REST_FOR_ONE, children=[worker(journal, c) for c in "abcd"]
            )
            before = await serials(sup, "a", "b", "c", "d")
            mark = journal.mark()
            system.lookup("sup/b").tell("boom")
            await wait_for_event(sup, RESTARTED, "d")
            assert journal.since(mark, "stop", "start") == [
                ("stop", "b"),
                ("stop", "d"),
                ("stop", "c"),
                ("start", "b"),
                ("start", "c"),
                ("start", "d"),
            ]
            after = await serials(sup, "a", "b", "c", "d")
            assert after["a"] == before["a"]
            assert all(after[c] != before[c] for c in "bcd")
            assert kinds(sup, "a") == [STARTED]


_EXITS = ("normal", "shutdown", "error")
# (restart type, exit) -> what the supervisor does: "restarted", "stopped" (listed, not running) or "removed".
_OUTCOME = {
    (Restart.PERMANENT, "normal"): "restarted",
    (Restart.PERMANENT, "shutdown"): "restarted",
    (Restart.PERMANENT, "error"): "restarted",
    (Restart.TRANSIENT, "normal"): "stopped",
    (Restart.TRANSIENT, "shutdown"): "stopped",
    (Restart.TRANSIENT, "error"): "restarted",
    (Restart.TEMPORARY, "normal"): "removed",
    (Restart.TEMPORARY, "shutdown"): "removed",
    (Restart.TEMPORARY, "error"): "removed",
}


@virtual_time
class TestRestartTypes:
    @pytest.mark.parametrize("exit_kind", _EXITS)
    @pytest.mark.parametrize("restart", list(Restart))
    async def test_restart_type_exit_matrix_follows_otp(self, restart: Restart, exit_kind: str) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system,
                name="sup",
                intensity=5,
                children=[worker(journal, "w", restart=restart), worker(journal, "s")],
            )
            before = await serials(sup, "w", "s")
            ref = system.lookup("sup/w")
            if exit_kind == "normal":
                ref.tell("exit")  # self.stop()
            elif exit_kind == "shutdown":
                reason = await ref.stop()
                assert reason.kind is ExitKind.SHUTDOWN
            else:
                ref.tell("boom")
            await wait_for_event(sup, FAILED if exit_kind == "error" else SHUT_DOWN, "w")
            children = {child.id: child for child in await sup.which_children()}
            outcome = _OUTCOME[restart, exit_kind]
            if outcome == "restarted":
                assert children["w"].state is ChildState.RUNNING
                assert children["w"].restarts == 1
                assert children["w"].ref is ref
                assert await ref.ask("serial") != before["w"]
                assert kinds(sup, "w")[-1] is RESTARTED
            else:
                assert RESTARTED not in kinds(sup, "w")
                assert not ref.is_alive
                assert "sup/w" not in system.names()
                if outcome == "stopped":
                    assert children["w"].state is ChildState.STOPPED
                    assert children["w"].ref is None
                else:
                    assert "w" not in children
            # Whatever happened to w, its sibling kept its instance.
            assert (await serials(sup, "s"))["s"] == before["s"]


@virtual_time
class TestIntensity:
    async def test_intensity_n_crashes_within_period_survives(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system, name="sup", intensity=3, period=10.0, children=[worker(journal, c) for c in "abc"]
            )
            for n in range(1, 4):
                system.lookup("sup/b").tell("boom")
                await wait_for_event(sup, RESTARTED, "b", count=n)
            assert sup.ref.is_alive
            assert [(c.id, c.state, c.restarts) for c in await sup.which_children()] == [
                ("a", ChildState.RUNNING, 0),
                ("b", ChildState.RUNNING, 3),
                ("c", ChildState.RUNNING, 0),
            ]
            assert events(sup, ESCALATED) == []

    async def test_intensity_n_plus_one_crashes_stops_children_in_reverse_and_fails(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system, name="sup", intensity=3, period=10.0, children=[worker(journal, c) for c in "abcd"]
            )
            for n in range(1, 4):
                system.lookup("sup/b").tell("boom")
                await wait_for_event(sup, RESTARTED, "b", count=n)
            mark = journal.mark()
            system.lookup("sup/b").tell("boom")
            await wait_until(lambda: not sup.ref.is_alive, what="escalation")
            reason = sup.ref.stop_reason
            assert reason is not None
            assert reason.kind is ExitKind.ERROR
            assert isinstance(reason.exception, RestartIntensityExceeded)
            assert reason.exception.child_id == "b"
            assert len(reason.exception.restarts) == 4
            # b's own on_stop as it crashed; then the others, newest first; nothing restarted.
            assert journal.since(mark, "stop", "start") == [("stop", "b"), ("stop", "d"), ("stop", "c"), ("stop", "a")]
            assert system.names() == []
            assert kinds(sup, "b")[-2:] == [FAILED, ESCALATED]
            assert [e.child_id for e in events(sup, SHUT_DOWN)][-1] is None  # the supervisor itself, last

    async def test_intensity_n_plus_one_crashes_spread_over_more_than_period_survives(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(system, name="sup", intensity=2, period=5.0, children=[worker(journal, "w")])
            for n in range(1, 6):  # 5 crashes, 3 s apart: never more than 2 within any 5 s
                system.lookup("sup/w").tell("boom")
                await wait_for_event(sup, RESTARTED, "w", count=n)
                await anyio.sleep(3.0)
            assert sup.ref.is_alive
            assert (await sup.which_children())[0].restarts == 5

    async def test_intensity_exceeded_in_nested_supervisor_parent_sees_the_error(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            inner = supervisor_spec("inner", intensity=1, period=10.0, children=[worker(journal, "w")])
            root = await start_supervisor(system, name="root", intensity=5, children=[inner])
            system.lookup("root/inner/w").tell("boom")
            await wait_for_event(root, RESTARTED, "w")
            system.lookup("root/inner/w").tell("boom")
            failed = await wait_for_event(root, FAILED, "inner")
            assert failed.supervisor == "root"
            assert "RestartIntensityExceeded" in failed.reason
            await wait_for_event(root, RESTARTED, "inner")
            assert root.ref.is_alive
            assert [e.supervisor for e in events(root, ESCALATED)] == ["root/inner"]


@virtual_time
class TestFailedRestart:
    async def test_restart_start_raises_escalates_nothing_left_running(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system,
                name="sup",
                intensity=2,
                children=[worker(journal, "a"), worker(journal, "w", start_fails=after_first), worker(journal, "c")],
            )
            system.lookup("sup/w").tell("boom")
            await wait_until(lambda: not sup.ref.is_alive, what="escalation")
            reason = sup.ref.stop_reason
            assert reason is not None
            assert isinstance(reason.exception, RestartIntensityExceeded)
            # One crash and two failed re-starts: three failures against an intensity of 2.
            assert journal.count("attempt", "w") == 3
            assert [e.reason.startswith("error: restart failed") for e in events(sup, FAILED, "w")] == [
                False,
                True,
                True,
            ]
            assert journal.of("stop") == ["w", "c", "a"]
            assert system.names() == []

    # Regression: the exit notice of a failed start attempt was taken for a crash of the next, healthy instance,
    # and the supervisor died trying to start a second instance behind the same ref.
    async def test_restart_start_raises_once_then_succeeds_child_runs_supervisor_stays(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system, name="sup", intensity=5, children=[worker(journal, "w", start_fails=lambda n: n == 2)]
            )
            ref = system.lookup("sup/w")
            ref.tell("boom")
            await wait_for_event(sup, RESTARTED, "w")
            ref.tell("after")
            assert await ref.ask("seen") == ["after"]
            assert sup.ref.is_alive
            assert [(c.state, c.restarts) for c in await sup.which_children()] == [(ChildState.RUNNING, 1)]
            assert journal.count("start", "w") == 2
            assert len(events(sup, FAILED, "w")) == 2

    async def test_static_child_start_raises_supervisor_start_fails_started_ones_stopped(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            with pytest.raises(ActorStartError):
                await start_supervisor(
                    system,
                    name="sup",
                    children=[
                        worker(journal, "a"),
                        worker(journal, "b"),
                        worker(journal, "c", start_fails=lambda n: True),
                    ],
                )
            assert journal.of("stop") == ["b", "a"]
            assert system.names() == []

    # Regression: a non-critical child whose re-start failed inside a one_for_all group restart left the
    # children after it in the group never started.
    async def test_one_for_all_group_non_critical_member_fails_to_start_later_members_still_start(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            sup = await start_supervisor(
                system,
                name="sup",
                strategy=Strategy.ONE_FOR_ALL,
                intensity=5,
                children=[
                    worker(journal, "a"),
                    worker(journal, "n", start_fails=after_first, critical=False, intensity=1, detach_cooldown=60),
                    worker(journal, "c"),
                ],
            )
            system.lookup("sup/a").tell("boom")
            await wait_for_event(sup, DETACHED, "n")
            await wait_for_event(sup, RESTARTED, "c")
            states = {c.id: c.state for c in await sup.which_children()}
            assert states == {"a": ChildState.RUNNING, "n": ChildState.DETACHED, "c": ChildState.RUNNING}
            assert sup.ref.is_alive


@virtual_time
class TestTemporaryCasualty:
    @pytest.mark.parametrize("strategy", [Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE])
    async def test_temporary_sibling_stopped_by_restart_removed_and_uses_no_intensity(self, strategy: Strategy) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            # intensity=1: if the temporary casualty were charged a restart too, this one crash would escalate.
            sup = await start_supervisor(
                system,
                name="sup",
                strategy=strategy,
                intensity=1,
                children=[
                    worker(journal, "t0", restart=Restart.TEMPORARY),
                    worker(journal, "b"),
                    worker(journal, "t1", restart=Restart.TEMPORARY),
                    worker(journal, "c"),
                ],
            )
            t1 = system.lookup("sup/t1")
            system.lookup("sup/b").tell("boom")
            await wait_for_event(sup, RESTARTED, "c")
            ids = [c.id for c in await sup.which_children()]
            assert "t1" not in ids
            assert journal.count("start", "t1") == 1
            assert journal.count("stop", "t1") == 1
            assert not t1.is_alive
            assert RESTARTED not in kinds(sup, "t1")
            assert sup.ref.is_alive
            assert events(sup, ESCALATED) == []
            if strategy is Strategy.ONE_FOR_ALL:
                assert ids == ["b", "c"]  # t0 was a casualty too
            else:
                assert ids == ["t0", "b", "c"]  # before the failed child: untouched
                assert journal.count("start", "t0") == 1
                assert journal.count("stop", "t0") == 0


@virtual_time
class TestNested:
    async def test_nested_escalation_climbs_exactly_one_level(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            inner = supervisor_spec("inner", intensity=0, children=[worker(journal, "w")])
            mid = supervisor_spec("mid", intensity=5, children=[inner, worker(journal, "m")])
            root = await start_supervisor(system, name="root", intensity=5, children=[mid, worker(journal, "r")])
            mid_ref = system.lookup("root/mid")
            inner_ref = system.lookup("root/mid/inner")
            system.lookup("root/mid/inner/w").tell("boom")
            await wait_for_event(root, RESTARTED, "inner")
            await wait_until(lambda: "root/mid/inner/w" in system.names(), what="w back")
            # inner gave up (intensity 0), mid restarted it, root saw nothing.
            assert [e.supervisor for e in events(root, ESCALATED)] == ["root/mid/inner"]
            assert [(e.supervisor, e.child_id) for e in events(root, FAILED)] == [
                ("root/mid/inner", "w"),
                ("root/mid", "inner"),
            ]
            assert inner_ref.statistics().restarts == 1
            assert mid_ref.statistics().restarts == 0
            assert root.ref.statistics().restarts == 0
            assert kinds(root, "mid") == [STARTED]
            assert journal.count("start", "m") == 1
            assert journal.count("start", "r") == 1
            assert journal.count("start", "w") == 2

    async def test_nested_restarted_sub_supervisor_dynamic_children_gone(self) -> None:
        journal = Journal()
        async with open_actor_system() as system:
            inner = supervisor_spec("inner", intensity=0, children=[worker(journal, "w")])
            root = await start_supervisor(system, name="root", intensity=5, children=[inner])
            inner_sup = SupervisorRef(system.lookup("root/inner"), root.events)
            dyn_ref = await inner_sup.start_child(worker(journal, "dyn"))
            assert [c.id for c in await inner_sup.which_children()] == ["w", "dyn"]
            system.lookup("root/inner/w").tell("boom")
            await wait_for_event(root, RESTARTED, "inner")
            # OTP: a restarted supervisor starts from its static specs only.
            assert [c.id for c in await inner_sup.which_children()] == ["w"]
            assert not dyn_ref.is_alive
            assert "root/inner/dyn" not in system.names()
            assert journal.count("start", "dyn") == 1
