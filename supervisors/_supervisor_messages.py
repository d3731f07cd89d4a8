from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from actors import ActorRef, ExitReason, Message

from ._spec import Restart

if TYPE_CHECKING:
    from ._spec import ChildSpec


class ChildState(enum.Enum):
    """Where a child is, as ``which_children()`` reports it."""

    RUNNING = "running"
    RESTARTING = "restarting"  # between instances: crashed and waiting out a backoff, or being restarted
    DETACHED = "detached"  # a non-critical child out of service until its cool-down passes
    STOPPED = "stopped"  # not running and not coming back by itself (terminated, or a transient normal exit)


class ChildInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``which_children()``."""

    id: str
    ref: ActorRef[Any] | None
    state: ChildState
    restart: Restart
    critical: bool
    is_supervisor: bool
    restarts: int


class ChildCounts(msgspec.Struct, frozen=True, kw_only=True):
    """``count_children()``: OTP's specs/active/supervisors/workers, plus our detached and restarting."""

    specs: int
    active: int
    supervisors: int
    workers: int
    restarting: int
    detached: int


class SupervisorHealth(msgspec.Struct, frozen=True, kw_only=True):
    """``healthy`` when every child runs; ``degraded`` when a child is detached or restarting."""

    status: str
    detached: tuple[str, ...]
    restarting: tuple[str, ...]
    restarts: int


# -- internal requests (children and the SupervisorRef facade talk to the supervisor through its mailbox) --------


class _ChildExited(Message, frozen=True, kw_only=True):
    child_id: str
    ref: ActorRef[Any]
    reason: ExitReason
    launch: int  # which instance of the ref it was (its ``_incarnations`` count; _Child.launches once started)


class _RestartDue(Message, frozen=True, kw_only=True):
    child_id: str
    generation: int
    group: tuple[str, ...]


class _ReattachDue(Message, frozen=True, kw_only=True):
    child_id: str
    generation: int


class _ProbeCheck(Message, frozen=True, kw_only=True):
    child_id: str
    generation: int


class ChildBlockedLoop(Message, frozen=True, kw_only=True):
    """Told to a supervisor by the loop-lag watchdog: this child blocked the event loop for ``seconds``."""

    child_id: str
    seconds: float


@dataclass(frozen=True, slots=True)
class _StartChild:
    spec: ChildSpec


class _AdminOp(enum.Enum):
    TERMINATE = "terminate_child"
    RESTART = "restart_child"
    DELETE = "delete_child"


@dataclass(frozen=True, slots=True)
class _Admin:
    op: _AdminOp
    child_id: str


class _Query(enum.Enum):
    WHICH = "which_children"
    COUNT = "count_children"
    HEALTH = "health"


@dataclass(frozen=True, slots=True)
class _Refused:
    error: Exception
