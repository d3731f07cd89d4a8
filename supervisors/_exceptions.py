"""Errors raised by supervision.

::

    SupervisorError
    ├── InvalidChildSpec          a ChildSpec (or a supervisor flag) breaks a rule (also a ValueError)
    ├── DuplicateChild            a child with that id is already supervised (also a ValueError)
    ├── UnknownChild              no child with that id is supervised (also a LookupError)
    ├── ChildRunning              delete_child/restart_child on a child that is running
    ├── ChildStartError           a child's start callable (or its start-up) raised
    └── RestartIntensityExceeded  more than `intensity` restarts within `period`: the supervisor gives up
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


class SupervisorError(Exception):
    """Root of every error that supervision raises."""


class InvalidChildSpec(SupervisorError, ValueError):
    """A child spec breaks a rule; the message names the child, the field and the rule."""

    def __init__(self, child_id: str, field: str, rule: str) -> None:
        super().__init__(f"invalid child spec {child_id!r}: {field} {rule}")
        self.child_id = child_id
        self.field = field
        self.rule = rule


class DuplicateChild(SupervisorError, ValueError):
    """A child with this id is already supervised (ids are unique within one supervisor)."""

    def __init__(self, child_id: str) -> None:
        super().__init__(f"a child with id {child_id!r} is already supervised")
        self.child_id = child_id


class UnknownChild(SupervisorError, LookupError):
    """No child with this id is supervised."""

    def __init__(self, child_id: str) -> None:
        super().__init__(f"no child with id {child_id!r}")
        self.child_id = child_id


class ChildRunning(SupervisorError):
    """An admin call that needs a stopped child (``delete_child``, ``restart_child``) found it running."""

    def __init__(self, child_id: str, operation: str) -> None:
        super().__init__(f"{operation} needs child {child_id!r} stopped, but it is running")
        self.child_id = child_id
        self.operation = operation


class ChildStartError(SupervisorError):
    """Starting a child raised; the original exception is ``cause`` (and ``__cause__`` if raised ``from``)."""

    def __init__(self, child_id: str, cause: BaseException) -> None:
        super().__init__(f"child {child_id!r} failed to start: {cause!r}")
        self.child_id = child_id
        self.cause = cause


class RestartIntensityExceeded(SupervisorError):
    """More than ``intensity`` restarts happened within ``period`` seconds, so the supervisor shuts down.

    :param supervisor: the name of the supervisor that gave up
    :param intensity: its restart intensity (the most restarts allowed within ``period``)
    :param period: its period in seconds
    :param restarts: the restart times (the supervisor's clock, oldest first) seen within the period,
        including the one that exceeded the intensity
    :param child_id: the child whose failure exceeded the intensity, when known
    """

    def __init__(
        self,
        supervisor: str,
        intensity: int,
        period: float,
        restarts: Sequence[float],
        child_id: str | None = None,
    ) -> None:
        culprit = "" if child_id is None else f"; last failed child {child_id!r}"
        super().__init__(
            f"supervisor {supervisor!r} reached its maximum restart intensity: {len(restarts)} restarts "
            f"within {period} s (intensity {intensity}){culprit}"
        )
        self.supervisor = supervisor
        self.intensity = intensity
        self.period = period
        self.restarts = tuple(restarts)
        self.child_id = child_id
