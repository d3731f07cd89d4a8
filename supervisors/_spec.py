from __future__ import annotations

import enum
import math
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING

from supervisors._backoff import Backoff
from supervisors._exceptions import InvalidChildSpec
from supervisors._isolation import Isolation, isolation_problem

if TYPE_CHECKING:
    from collections.abc import Callable


class Strategy(enum.Enum):
    """Which children a supervisor restarts when one of them fails (OTP's restart strategies)."""

    #: Restart only the failed child.
    ONE_FOR_ONE = "one_for_one"
    #: Stop every other child (reverse start order), then restart all of them (start order).
    ONE_FOR_ALL = "one_for_all"
    #: Stop the children started after the failed one (reverse order), then restart it and them (start order).
    REST_FOR_ONE = "rest_for_one"


class Restart(enum.Enum):
    """When a child that exited is restarted (OTP's restart types); see :func:`should_restart`."""

    #: Always restarted, whatever the exit.
    PERMANENT = "permanent"
    #: Restarted only after an abnormal exit (an error); a normal exit or a shutdown is final.
    TRANSIENT = "transient"
    #: Never restarted, not even when a sibling's failure stopped it; it is removed when it exits.
    TEMPORARY = "temporary"


class Shutdown(enum.Enum):
    """How a child is stopped, besides a graceful timeout in seconds (a ``float``)."""

    #: Cancel the child at once, without a graceful stop.
    BRUTAL = "brutal_kill"
    #: Ask the child to stop and wait as long as it takes: for children that are supervisors themselves, so a
    #: subtree has all the time it needs to stop its own children in order.
    INFINITY = "infinity"


class AutoShutdown(enum.Enum):
    """Whether a supervisor shuts itself down when its significant children exit (OTP's ``auto_shutdown``)."""

    #: Never; significant children are rejected (see :func:`validate_significant`).
    NEVER = "never"
    #: When any significant child exits on its own and is not restarted.
    ANY_SIGNIFICANT = "any_significant"
    #: When the last running significant child exits on its own and is not restarted.
    ALL_SIGNIFICANT = "all_significant"


def should_restart(restart: Restart, exit_was_error: bool) -> bool:
    """Whether a child that exited on its own is restarted, from its restart type.

    :param restart: the child's restart type
    :param exit_was_error: whether the child failed (raised, hung, crashed), rather than returned or was
        shut down
    :return: always for ``PERMANENT``; only on an error for ``TRANSIENT``; never for ``TEMPORARY``
    """
    if restart is Restart.PERMANENT:
        return True
    if restart is Restart.TRANSIENT:
        return exit_was_error
    return False


def _intensity_problem(intensity: object, period: object) -> tuple[str, str, type[Exception]] | None:
    # One rule set for a supervisor's budget and a non-critical child's own budget: (field, rule, error type).
    if isinstance(intensity, bool) or not isinstance(intensity, int):
        return "intensity", f"must be an int, got {type(intensity).__name__}", TypeError
    if intensity < 0:
        return "intensity", f"must be >= 0, got {intensity}", ValueError
    if isinstance(period, bool) or not isinstance(period, int | float):
        return "period", f"must be a number of seconds, got {type(period).__name__}", TypeError
    if not (math.isfinite(period) and period > 0):
        return "period", f"must be finite and > 0 seconds, got {period!r}", ValueError
    return None


def validate_intensity(intensity: int, period: float) -> None:
    """Check a restart budget: at most ``intensity`` restarts within ``period`` seconds.

    :param intensity: the most restarts allowed within ``period`` (an int >= 0; 0 means no restart at all)
    :param period: the sliding window in seconds (finite, > 0)
    :raises TypeError: when ``intensity`` is not an int or ``period`` is not a number
    :raises ValueError: when ``intensity < 0`` or ``period`` is not finite and positive
    """
    problem = _intensity_problem(intensity, period)
    if problem is None:
        return
    field, rule, error = problem
    raise error(f"{field} {rule}")


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How a supervisor starts, stops and restarts one child.

    A frozen dataclass rather than a ``msgspec.Struct``: it holds a callable and is never encoded, and a
    dataclass says so. Validated on construction: a problem raises :class:`InvalidChildSpec` naming the field
    and the rule.

    :param id: the child's id, unique within its supervisor (non-empty)
    :param start: called with no arguments to build the child (for an actor: its factory)
    :param restart: when the child is restarted after it exits (see :func:`should_restart`)
    :param shutdown: seconds to wait for a graceful stop before cancelling (>= 0), ``Shutdown.BRUTAL`` to
        cancel at once, or ``Shutdown.INFINITY`` to wait as long as it takes (for supervisors)
    :param critical: ``True``: a failure counts against the supervisor's intensity and may escalate.
        ``False``: it never does; the child spends its own budget (``intensity`` / ``period``) and, when that
        is exhausted, is detached and re-attached after a cool-down (``detach_cooldown``, doubling after each
        failed probe up to ``max_detach_cooldown``)
    :param significant: whether its own exit counts towards the supervisor's ``AutoShutdown`` (never allowed
        with ``Restart.PERMANENT``, which never exits for good)
    :param backoff: the delay between restarts; ``None`` restarts at once, as OTP does
    :param handler_timeout: seconds one message handler may run before it is cancelled and counted as a
        failure (> 0); ``None`` for no deadline
    :param mailbox: the mailbox configuration handed to the actor runtime; ``None`` for its default
    :param detach_cooldown: the first cool-down in seconds after a non-critical child is detached (> 0)
    :param max_detach_cooldown: the cap on that cool-down in seconds (>= detach_cooldown)
    :param intensity: a non-critical child's own budget: the most restarts within ``period`` before it is
        detached (>= 0; unused when ``critical``)
    :param period: that budget's window in seconds (> 0); also how long a re-attached child must stay up for
        its probe to pass (unused when ``critical``)
    :param isolation: ``"task"`` (default): the child runs in this event loop. ``"process"`` (or a
        ``ProcessIsolation`` with its own heartbeats and timeouts): it runs in a worker process, represented here
        by a ``ProcessHost`` actor that fails when the worker crashes, exits, is killed or misses heartbeats;
        ``start`` must then be an ``ActorRecipe`` and ``handler_timeout`` applies to the actor in the worker
    :raises InvalidChildSpec: when a field breaks its rule
    """

    id: str
    start: Callable[[], object]
    _: KW_ONLY
    restart: Restart = Restart.PERMANENT
    shutdown: float | Shutdown = 5.0
    critical: bool = True
    significant: bool = False
    backoff: Backoff | None = None
    handler_timeout: float | None = None
    mailbox: object | None = None
    detach_cooldown: float = 30.0
    max_detach_cooldown: float = 600.0
    intensity: int = 3
    period: float = 5.0
    isolation: Isolation = "task"

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem is not None:
            field, rule = problem
            raise InvalidChildSpec(self.id if isinstance(self.id, str) else repr(self.id), field, rule)

    def _problem(self) -> tuple[str, str] | None:
        if not isinstance(self.id, str):
            return "id", f"must be a str, got {type(self.id).__name__}"
        if not self.id:
            return "id", "must not be empty"
        if "/" in self.id:
            # Child refs are named "<supervisor>/<id>": the watchdog finds a child's supervisor by that path.
            return "id", f"must not contain '/', got {self.id!r}"
        if not callable(self.start):
            return (
                "start",
                f"must be callable (a factory taking no arguments), got {type(self.start).__name__}",
            )
        if not isinstance(self.restart, Restart):
            return "restart", f"must be a Restart member, got {self.restart!r}"
        if (problem := _shutdown_problem(self.shutdown)) is not None:
            return "shutdown", problem
        for flag in ("critical", "significant"):
            if not isinstance(getattr(self, flag), bool):
                return flag, f"must be a bool, got {getattr(self, flag)!r}"
        if self.significant and self.restart is Restart.PERMANENT:
            return (
                "significant",
                "must be False for a PERMANENT child (OTP: a permanent child never exits for good)",
            )
        if self.backoff is not None and not isinstance(self.backoff, Backoff):
            return "backoff", f"must be a Backoff or None, got {type(self.backoff).__name__}"
        if self.handler_timeout is not None and not _is_positive_seconds(self.handler_timeout):
            return "handler_timeout", f"must be None or finite seconds > 0, got {self.handler_timeout!r}"
        if not _is_positive_seconds(self.detach_cooldown):
            return "detach_cooldown", f"must be finite seconds > 0, got {self.detach_cooldown!r}"
        if not _is_positive_seconds(self.max_detach_cooldown) or self.max_detach_cooldown < self.detach_cooldown:
            return (
                "max_detach_cooldown",
                f"must be finite seconds >= detach_cooldown ({self.detach_cooldown!r}), "
                f"got {self.max_detach_cooldown!r}",
            )
        if (budget_problem := _intensity_problem(self.intensity, self.period)) is not None:
            return budget_problem[:2]
        return isolation_problem(self.isolation, self.start, self.shutdown)


def _is_positive_seconds(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and value > 0


def _shutdown_problem(shutdown: object) -> str | None:
    if isinstance(shutdown, Shutdown):
        return None
    if isinstance(shutdown, bool) or not isinstance(shutdown, int | float):
        return f"must be seconds (a float), Shutdown.BRUTAL or Shutdown.INFINITY, got {shutdown!r}"
    if math.isnan(shutdown) or shutdown < 0:
        return f"must be >= 0 seconds, got {shutdown!r}"
    if math.isinf(shutdown):
        return "must be finite seconds; use Shutdown.INFINITY to wait without a limit"
    return None


def validate_significant(spec: ChildSpec, auto_shutdown: AutoShutdown) -> None:
    """Check that a supervisor with this ``auto_shutdown`` may hold this child (OTP rejects the same pairs).

    :param spec: the child to add (at start-up or by ``start_child``)
    :param auto_shutdown: the supervisor's setting
    :raises InvalidChildSpec: when the child is significant and ``auto_shutdown`` is ``AutoShutdown.NEVER``
    """
    if spec.significant and auto_shutdown is AutoShutdown.NEVER:
        raise InvalidChildSpec(
            spec.id,
            "significant",
            "must be False under a supervisor whose auto_shutdown is AutoShutdown.NEVER",
        )
