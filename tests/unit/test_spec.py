from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from supervisors._backoff import Backoff
from supervisors._exceptions import (
    ChildRunning,
    ChildStartError,
    DuplicateChild,
    InvalidChildSpec,
    RestartIntensityExceeded,
    SupervisorError,
    UnknownChild,
)
from supervisors._spec import (
    AutoShutdown,
    ChildSpec,
    Restart,
    Shutdown,
    should_restart,
    validate_intensity,
    validate_significant,
)


def _start() -> object:
    return object()


class TestShouldRestart:
    @pytest.mark.parametrize(
        ("restart", "exit_was_error", "expected"),
        [
            (Restart.PERMANENT, True, True),
            (Restart.PERMANENT, False, True),
            (Restart.TRANSIENT, True, True),
            (Restart.TRANSIENT, False, False),
            (Restart.TEMPORARY, True, False),
            (Restart.TEMPORARY, False, False),
        ],
    )
    def test_should_restart_by_restart_type_and_exit_follows_otp(
        self, restart: Restart, exit_was_error: bool, expected: bool
    ) -> None:
        assert should_restart(restart, exit_was_error) is expected


class TestChildSpecConstruction:
    def test_child_spec_defaults_match_documented_values(self) -> None:
        spec = ChildSpec("worker", _start)
        assert spec.restart is Restart.PERMANENT
        assert spec.shutdown == 5.0
        assert spec.critical is True
        assert spec.significant is False
        assert spec.backoff is None
        assert spec.handler_timeout is None
        assert spec.mailbox is None
        assert (spec.detach_cooldown, spec.max_detach_cooldown) == (30.0, 600.0)
        assert (spec.intensity, spec.period) == (3, 5.0)

    def test_child_spec_options_after_start_are_keyword_only(self) -> None:
        with pytest.raises(TypeError):
            ChildSpec("worker", _start, Restart.TEMPORARY)  # type: ignore[call-arg]

    def test_child_spec_assignment_raises_frozen_error(self) -> None:
        spec = ChildSpec("worker", _start)
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.id = "other"  # type: ignore[misc]

    @pytest.mark.parametrize(
        "shutdown", [0, 0.0, 5, 2.5, Shutdown.BRUTAL, Shutdown.INFINITY], ids=lambda value: repr(value)
    )
    def test_child_spec_valid_shutdown_is_accepted(self, shutdown: float | Shutdown) -> None:
        assert ChildSpec("worker", _start, shutdown=shutdown).shutdown == shutdown

    @pytest.mark.parametrize("restart", [Restart.TRANSIENT, Restart.TEMPORARY])
    def test_child_spec_significant_non_permanent_is_accepted(self, restart: Restart) -> None:
        assert ChildSpec("worker", _start, restart=restart, significant=True).significant is True

    def test_child_spec_non_critical_with_zero_intensity_is_accepted(self) -> None:
        spec = ChildSpec("monitoring", _start, critical=False, intensity=0, period=1)
        assert (spec.critical, spec.intensity) == (False, 0)

    def test_child_spec_full_options_are_kept(self) -> None:
        backoff = Backoff(min=0.5, max=4.0)
        mailbox = object()
        spec = ChildSpec(
            "monitor",
            _start,
            restart=Restart.TRANSIENT,
            shutdown=1.0,
            critical=False,
            backoff=backoff,
            handler_timeout=2.0,
            mailbox=mailbox,
            detach_cooldown=10.0,
            max_detach_cooldown=10.0,
            intensity=5,
            period=30.0,
        )
        assert spec.backoff is backoff
        assert spec.mailbox is mailbox
        assert spec.max_detach_cooldown == spec.detach_cooldown == 10.0


_INVALID_SPECS: list[tuple[str, dict[str, Any], str, str]] = [
    # (case, ChildSpec arguments besides id/start overrides, field named, a fragment of the rule)
    ("empty_id", {"id": ""}, "id", "must not be empty"),
    ("non_str_id", {"id": 7}, "id", "must be a str"),
    ("non_callable_start", {"start": "not callable"}, "start", "must be callable"),
    ("restart_as_string", {"restart": "permanent"}, "restart", "Restart member"),
    ("negative_shutdown", {"shutdown": -1.0}, "shutdown", ">= 0"),
    ("nan_shutdown", {"shutdown": math.nan}, "shutdown", ">= 0"),
    ("infinite_float_shutdown", {"shutdown": math.inf}, "shutdown", "Shutdown.INFINITY"),
    ("bool_shutdown", {"shutdown": True}, "shutdown", "Shutdown.BRUTAL"),
    ("string_shutdown", {"shutdown": "brutal_kill"}, "shutdown", "Shutdown.BRUTAL"),
    ("non_bool_critical", {"critical": 1}, "critical", "must be a bool"),
    ("non_bool_significant", {"significant": "yes"}, "significant", "must be a bool"),
    ("significant_permanent", {"significant": True}, "significant", "PERMANENT"),
    ("backoff_wrong_type", {"backoff": 1.0}, "backoff", "Backoff"),
    ("zero_handler_timeout", {"handler_timeout": 0.0}, "handler_timeout", "> 0"),
    ("negative_handler_timeout", {"handler_timeout": -1.0}, "handler_timeout", "> 0"),
    ("infinite_handler_timeout", {"handler_timeout": math.inf}, "handler_timeout", "finite"),
    ("zero_detach_cooldown", {"detach_cooldown": 0.0}, "detach_cooldown", "> 0"),
    (
        "max_detach_cooldown_below_initial",
        {"detach_cooldown": 30.0, "max_detach_cooldown": 10.0},
        "max_detach_cooldown",
        ">= detach_cooldown",
    ),
    ("negative_intensity", {"intensity": -1}, "intensity", ">= 0"),
    ("float_intensity", {"intensity": 1.5}, "intensity", "must be an int"),
    ("zero_period", {"period": 0.0}, "period", "> 0"),
    ("infinite_period", {"period": math.inf}, "period", "finite"),
]


class TestChildSpecValidation:
    @pytest.mark.parametrize(
        ("overrides", "field", "rule"),
        [pytest.param(overrides, field, rule, id=case) for case, overrides, field, rule in _INVALID_SPECS],
    )
    def test_child_spec_breaking_a_rule_raises_invalid_child_spec_naming_field(
        self, overrides: dict[str, Any], field: str, rule: str
    ) -> None:
        arguments: dict[str, Any] = {"id": "worker", "start": _start, **overrides}
        child_id = arguments.pop("id")
        start = arguments.pop("start")
        with pytest.raises(InvalidChildSpec) as caught:
            ChildSpec(child_id, start, **arguments)
        assert caught.value.field == field
        assert rule in caught.value.rule
        assert field in str(caught.value)
        assert rule in str(caught.value)

    def test_invalid_child_spec_is_a_value_error_and_supervisor_error(self) -> None:
        with pytest.raises(ValueError, match="must not be empty") as caught:
            ChildSpec("", _start)
        assert isinstance(caught.value, SupervisorError)

    def test_invalid_child_spec_message_names_the_child(self) -> None:
        with pytest.raises(InvalidChildSpec, match="'bridge'") as caught:
            ChildSpec("bridge", _start, shutdown=-5)
        assert caught.value.child_id == "bridge"


class TestValidateIntensity:
    @pytest.mark.parametrize(("intensity", "period"), [(0, 1), (1, 5.0), (10, 0.001)])
    def test_validate_intensity_valid_budget_passes(self, intensity: int, period: float) -> None:
        validate_intensity(intensity, period)

    @pytest.mark.parametrize(
        ("intensity", "period", "error", "fragment"),
        [
            (-1, 5.0, ValueError, "intensity must be >= 0"),
            (True, 5.0, TypeError, "intensity must be an int"),
            (1.0, 5.0, TypeError, "intensity must be an int"),
            (1, 0, ValueError, "period must be finite and > 0"),
            (1, -2.0, ValueError, "period must be finite and > 0"),
            (1, math.nan, ValueError, "period must be finite and > 0"),
            (1, math.inf, ValueError, "period must be finite and > 0"),
            (1, "5", TypeError, "period must be a number"),
        ],
    )
    def test_validate_intensity_bad_budget_raises_naming_field(
        self, intensity: Any, period: Any, error: type[Exception], fragment: str
    ) -> None:
        with pytest.raises(error, match=fragment):
            validate_intensity(intensity, period)


class TestValidateSignificant:
    def test_validate_significant_under_never_raises(self) -> None:
        spec = ChildSpec("job", _start, restart=Restart.TRANSIENT, significant=True)
        with pytest.raises(InvalidChildSpec, match="auto_shutdown") as caught:
            validate_significant(spec, AutoShutdown.NEVER)
        assert caught.value.field == "significant"

    @pytest.mark.parametrize("auto_shutdown", [AutoShutdown.ANY_SIGNIFICANT, AutoShutdown.ALL_SIGNIFICANT])
    def test_validate_significant_under_auto_shutdown_passes(self, auto_shutdown: AutoShutdown) -> None:
        spec = ChildSpec("job", _start, restart=Restart.TEMPORARY, significant=True)
        validate_significant(spec, auto_shutdown)

    def test_validate_significant_non_significant_under_never_passes(self) -> None:
        validate_significant(ChildSpec("worker", _start), AutoShutdown.NEVER)


class TestExceptions:
    def test_exceptions_all_derive_from_supervisor_error(self) -> None:
        errors: list[SupervisorError] = [
            InvalidChildSpec("a", "id", "must not be empty"),
            DuplicateChild("a"),
            UnknownChild("a"),
            ChildRunning("a", "delete_child"),
            ChildStartError("a", RuntimeError("boom")),
            RestartIntensityExceeded("root", 1, 5.0, (1.0, 2.0)),
        ]
        assert all(isinstance(error, SupervisorError) for error in errors)

    def test_duplicate_child_is_value_error_and_keeps_id(self) -> None:
        error = DuplicateChild("bridge")
        assert isinstance(error, ValueError)
        assert error.child_id == "bridge"
        assert "'bridge'" in str(error)

    def test_unknown_child_is_lookup_error_and_keeps_id(self) -> None:
        error = UnknownChild("ghost")
        assert isinstance(error, LookupError)
        assert error.child_id == "ghost"
        assert "'ghost'" in str(error)

    def test_child_running_names_operation_and_child(self) -> None:
        error = ChildRunning("monitor", "delete_child")
        assert (error.child_id, error.operation) == ("monitor", "delete_child")
        assert "delete_child" in str(error)
        assert "'monitor'" in str(error)

    def test_child_start_error_keeps_cause(self) -> None:
        cause = RuntimeError("port in use")
        error = ChildStartError("bridge", cause)
        assert error.cause is cause
        assert error.child_id == "bridge"
        assert "port in use" in str(error)

    def test_restart_intensity_exceeded_keeps_budget_and_restarts(self) -> None:
        error = RestartIntensityExceeded("root", 2, 5.0, [1.0, 2.0, 3.0], child_id="bridge")
        assert (error.supervisor, error.intensity, error.period) == ("root", 2, 5.0)
        assert error.restarts == (1.0, 2.0, 3.0)
        assert error.child_id == "bridge"
        message = str(error)
        assert "'root'" in message
        assert "3 restarts" in message
        assert "intensity 2" in message
        assert "'bridge'" in message

    def test_restart_intensity_exceeded_without_child_omits_culprit(self) -> None:
        error = RestartIntensityExceeded("root", 0, 1.0, [4.0])
        assert error.child_id is None
        assert "last failed child" not in str(error)
