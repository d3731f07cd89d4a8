from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from supervisors._exceptions import DuplicateChild, UnknownChild
from supervisors._spec import AutoShutdown, Restart, Strategy
from supervisors._strategies import RestartPlan, auto_shutdown_triggered, restart_plan

_CHILDREN = ("a", "b", "c", "d")


def _is_subsequence(part: tuple[str, ...], whole: tuple[str, ...]) -> bool:
    remaining = iter(whole)
    return all(item in remaining for item in part)


class TestRestartPlanByStrategy:
    def test_one_for_one_restarts_only_failed(self) -> None:
        plan = restart_plan(Strategy.ONE_FOR_ONE, _CHILDREN, "b")
        assert plan == RestartPlan(failed="b", stop=(), start=("b",))

    def test_one_for_all_stops_others_in_reverse_and_starts_all_in_order(self) -> None:
        plan = restart_plan(Strategy.ONE_FOR_ALL, _CHILDREN, "b")
        assert plan.stop == ("d", "c", "a")
        assert plan.start == ("a", "b", "c", "d")
        assert plan.remove == ()

    def test_rest_for_one_stops_later_children_and_restarts_from_failed(self) -> None:
        plan = restart_plan(Strategy.REST_FOR_ONE, _CHILDREN, "b")
        assert plan.stop == ("d", "c")
        assert plan.start == ("b", "c", "d")

    def test_rest_for_one_last_child_failing_touches_no_sibling(self) -> None:
        plan = restart_plan(Strategy.REST_FOR_ONE, _CHILDREN, "d")
        assert (plan.stop, plan.start) == ((), ("d",))

    def test_one_for_all_single_child_stops_nothing(self) -> None:
        plan = restart_plan(Strategy.ONE_FOR_ALL, ["only"], "only")
        assert (plan.stop, plan.start) == ((), ("only",))


class TestRestartPlanRestartTypes:
    def test_one_for_all_temporary_sibling_is_stopped_and_removed(self) -> None:
        types = {"a": Restart.PERMANENT, "b": Restart.PERMANENT, "c": Restart.TEMPORARY, "d": Restart.TRANSIENT}
        plan = restart_plan(Strategy.ONE_FOR_ALL, _CHILDREN, "b", restart_types=types)
        assert plan.stop == ("d", "c", "a")
        assert plan.start == ("a", "b", "d")
        assert plan.remove == ("c",)

    def test_rest_for_one_temporary_sibling_before_failed_is_untouched(self) -> None:
        types = {"a": Restart.TEMPORARY, "b": Restart.TRANSIENT, "c": Restart.TEMPORARY, "d": Restart.PERMANENT}
        plan = restart_plan(Strategy.REST_FOR_ONE, _CHILDREN, "b", restart_types=types)
        assert plan.stop == ("d", "c")
        assert plan.start == ("b", "d")
        assert plan.remove == ("c",)

    def test_one_for_one_restart_types_change_nothing(self) -> None:
        types = dict.fromkeys(_CHILDREN, Restart.PERMANENT) | {"a": Restart.TEMPORARY}
        plan = restart_plan(Strategy.ONE_FOR_ONE, _CHILDREN, "b", restart_types=types)
        assert plan == RestartPlan(failed="b", stop=(), start=("b",))

    def test_restart_plan_failed_temporary_raises_value_error(self) -> None:
        types = dict.fromkeys(_CHILDREN, Restart.TEMPORARY)
        with pytest.raises(ValueError, match="TEMPORARY"):
            restart_plan(Strategy.ONE_FOR_ONE, _CHILDREN, "a", restart_types=types)

    def test_restart_plan_missing_type_of_stopped_sibling_raises_unknown_child(self) -> None:
        types = {"a": Restart.PERMANENT, "b": Restart.PERMANENT}
        with pytest.raises(UnknownChild) as caught:
            restart_plan(Strategy.ONE_FOR_ALL, _CHILDREN, "b", restart_types=types)
        assert caught.value.child_id in {"c", "d"}


class TestRestartPlanErrors:
    def test_restart_plan_unknown_failed_raises_unknown_child(self) -> None:
        with pytest.raises(UnknownChild, match="'ghost'"):
            restart_plan(Strategy.ONE_FOR_ONE, _CHILDREN, "ghost")

    def test_restart_plan_duplicate_id_raises_duplicate_child(self) -> None:
        with pytest.raises(DuplicateChild, match="'a'"):
            restart_plan(Strategy.ONE_FOR_ALL, ["a", "b", "a"], "b")

    def test_restart_plan_non_strategy_raises_type_error(self) -> None:
        with pytest.raises(TypeError, match="Strategy member"):
            restart_plan("one_for_one", _CHILDREN, "a")  # type: ignore[arg-type]


_ids = st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=12, unique=True)


class TestRestartPlanProperties:
    @given(children=_ids, data=st.data(), strategy=st.sampled_from(Strategy))
    def test_restart_plan_stops_exactly_the_right_children_in_reverse_order(
        self, children: list[str], data: st.DataObject, strategy: Strategy
    ) -> None:
        order = tuple(children)
        failed = data.draw(st.sampled_from(order))
        position = order.index(failed)
        expected_stopped = {
            Strategy.ONE_FOR_ONE: set(),
            Strategy.ONE_FOR_ALL: set(order) - {failed},
            Strategy.REST_FOR_ONE: set(order[position + 1 :]),
        }[strategy]
        plan = restart_plan(strategy, order, failed)
        assert set(plan.stop) == expected_stopped
        assert len(plan.stop) == len(expected_stopped)
        assert _is_subsequence(tuple(reversed(plan.stop)), order)
        assert set(plan.start) == expected_stopped | {failed}
        assert _is_subsequence(plan.start, order)
        assert plan.remove == ()

    @given(children=_ids, data=st.data(), strategy=st.sampled_from(Strategy))
    def test_restart_plan_with_types_never_restarts_a_temporary_sibling(
        self, children: list[str], data: st.DataObject, strategy: Strategy
    ) -> None:
        order = tuple(children)
        failed = data.draw(st.sampled_from(order))
        types = {child: data.draw(st.sampled_from(Restart)) for child in order}
        types[failed] = data.draw(st.sampled_from([Restart.PERMANENT, Restart.TRANSIENT]))
        plain = restart_plan(strategy, order, failed)
        plan = restart_plan(strategy, order, failed, restart_types=types)
        assert plan.stop == plain.stop
        assert set(plan.remove) == {child for child in plan.stop if types[child] is Restart.TEMPORARY}
        assert not set(plan.remove) & set(plan.start)
        assert set(plan.start) | set(plan.remove) == set(plain.start)
        assert _is_subsequence(plan.start, order)
        assert failed in plan.start


class TestAutoShutdownTriggered:
    @pytest.mark.parametrize(
        ("auto_shutdown", "exited_significant", "remaining", "expected"),
        [
            (AutoShutdown.NEVER, True, 0, False),
            (AutoShutdown.NEVER, False, 0, False),
            (AutoShutdown.ANY_SIGNIFICANT, True, 3, True),
            (AutoShutdown.ANY_SIGNIFICANT, True, 0, True),
            (AutoShutdown.ANY_SIGNIFICANT, False, 0, False),
            (AutoShutdown.ALL_SIGNIFICANT, True, 1, False),
            (AutoShutdown.ALL_SIGNIFICANT, True, 0, True),
            (AutoShutdown.ALL_SIGNIFICANT, False, 0, False),
        ],
    )
    def test_auto_shutdown_triggered_follows_otp(
        self, auto_shutdown: AutoShutdown, exited_significant: bool, remaining: int, expected: bool
    ) -> None:
        result = auto_shutdown_triggered(
            auto_shutdown, exited_significant=exited_significant, remaining_significant=remaining
        )
        assert result is expected

    def test_auto_shutdown_triggered_negative_remaining_raises_value_error(self) -> None:
        with pytest.raises(ValueError, match="remaining_significant"):
            auto_shutdown_triggered(AutoShutdown.ALL_SIGNIFICANT, exited_significant=True, remaining_significant=-1)
