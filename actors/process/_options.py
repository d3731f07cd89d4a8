from __future__ import annotations

import math
import signal
from typing import Literal

import msgspec

from actors._exceptions import ActorError
from actors._message import Message


def _seconds(owner: str, name: str, value: object, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be finite seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{owner}.{name} must be {'>= 0' if allow_zero else '> 0'} seconds, got {value!r}")


class ProcessIsolation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the worker process of a process-isolated actor is run and watched (``ChildSpec(isolation=...)``).

    ``isolation="process"`` means these defaults.

    :param heartbeat_interval: how often the worker tells the parent it is alive (from its event loop, so a
        worker whose loop is blocked or spinning falls silent)
    :param heartbeat_timeout: the host fails (and the supervisor restarts it) when nothing came from the worker for
        this long; it must exceed ``heartbeat_interval`` (> 2x), and a handler that runs synchronously for longer
        counts as a hang
    :param start_timeout: how long starting the process, importing the factory and running ``on_start`` may take
    :param stop_timeout: on a graceful stop, how long the worker gets to stop its actor and exit before SIGTERM
    :param terminate_timeout: how long after SIGTERM before SIGKILL
    :param outbox_limit: messages encoded but not yet written to the worker, beyond which the host stops taking
        messages out of its mailbox (so a worker that cannot keep up fills the host's bounded mailbox, whose
        overflow policy then applies)
    :param nice: how much lower the worker's CPU priority is than the parent's (0-19, added to its niceness from
        its first instruction on): when cores are scarce, a spinning or busy worker then takes CPU time only
        the parent does not want
    :param scheduling: ``"normal"``: the worker shares the CPU by its ``nice``; ``"idle"``: Linux's ``SCHED_IDLE``,
        the worker runs only when a core has nothing else to run, and a waking task of any other process preempts
        it at once (where SCHED_IDLE does not exist, ``nice`` 19 instead). For a worker whose work may wait, such
        as a monitor: on a machine whose cores are all busy it gets almost no CPU and falls behind rather than take
        time from the parent; starved for longer than 10 heartbeat timeouts, it is restarted like a stuck one
    :param start_method: ``"forkserver"``: forked by this process's fork server, which has the runtime and the
        factory's module imported already (milliseconds per start, so a restart costs the parent's cores
        almost nothing); ``"spawn"``: a new interpreter per worker, with this process's environment of the moment
        (hundreds of milliseconds of imports)
    """

    heartbeat_interval: float = 0.2
    heartbeat_timeout: float = 1.0
    start_timeout: float = 15.0
    stop_timeout: float = 1.0
    terminate_timeout: float = 0.5
    outbox_limit: int = 4096
    nice: int = 0
    scheduling: Literal["normal", "idle"] = "normal"
    start_method: Literal["forkserver", "spawn"] = "forkserver"

    def __post_init__(self) -> None:
        owner = "ProcessIsolation"
        for name in ("heartbeat_interval", "heartbeat_timeout", "start_timeout"):
            _seconds(owner, name, getattr(self, name))
        for name in ("stop_timeout", "terminate_timeout"):
            _seconds(owner, name, getattr(self, name), allow_zero=True)
        if self.heartbeat_timeout <= 2 * self.heartbeat_interval:
            raise ValueError(
                f"ProcessIsolation.heartbeat_timeout must be > 2 x heartbeat_interval ({self.heartbeat_interval}), "
                f"got {self.heartbeat_timeout}"
            )
        if isinstance(self.outbox_limit, bool) or not isinstance(self.outbox_limit, int) or self.outbox_limit < 1:
            raise ValueError(f"ProcessIsolation.outbox_limit must be an int >= 1, got {self.outbox_limit!r}")
        if isinstance(self.nice, bool) or not isinstance(self.nice, int) or not 0 <= self.nice <= 19:
            raise ValueError(f"ProcessIsolation.nice must be an int from 0 to 19, got {self.nice!r}")
        if self.scheduling not in ("normal", "idle"):
            raise ValueError(f"ProcessIsolation.scheduling must be 'normal' or 'idle', got {self.scheduling!r}")

    @property
    def graceful_budget(self) -> float:
        """Seconds a graceful stop may take: ``stop_timeout`` then ``terminate_timeout``, before SIGKILL."""
        return self.stop_timeout + self.terminate_timeout


class ProcessFault(Message, frozen=True, kw_only=True):
    """Told to a process-isolated actor's ref: make its worker misbehave (fault injection; never forwarded).

    ``raise``, ``hang``, ``block`` and ``spin`` act in the actor's next handler, after the messages already queued:
    ``raise`` fails it, ``hang`` awaits forever (its handler deadline, if any, cuts it), ``block`` calls
    ``time.sleep(seconds)``, ``spin`` runs ``while True: pass`` (the worker's event loop stops, heartbeats stop).
    ``exit`` ends the worker at once with ``exit_code``.
    """

    kind: Literal["raise", "hang", "block", "spin", "exit"]
    seconds: float = 0.0
    exit_code: int = 1


class WorkerFailed(ActorError):
    """The worker process behind a process-isolated actor failed; its host fails with this (a supervised failure).

    :param actor: the actor's name
    :param pid: the worker's process id, when it had one
    """

    def __init__(self, actor: str, pid: int | None, detail: str) -> None:
        super().__init__(f"{actor!r} (worker pid {pid}): {detail}")
        self.actor = actor
        self.pid = pid
        self.detail = detail


class WorkerExited(WorkerFailed):
    """The worker process ended without being asked to: a crash, a non-zero exit, a kill by a signal.

    :param returncode: the exit status (negative: killed by that signal), or None if it could not be read
    :param reason: what the worker said about its actor before exiting (empty if it could not say)
    """

    def __init__(self, actor: str, pid: int | None, returncode: int | None, reason: str = "") -> None:
        if returncode is None:
            how = "closed its link"
        elif returncode < 0:
            try:
                how = f"was killed by {signal.Signals(-returncode).name}"
            except ValueError:
                how = f"was killed by signal {-returncode}"
        else:
            how = f"exited with code {returncode}"
        super().__init__(actor, pid, f"the worker {how}" + (f" ({reason})" if reason else ""))
        self.returncode = returncode
        self.reason = reason


class HeartbeatMissed(WorkerFailed):
    """Nothing came from the worker for longer than its heartbeat timeout: its event loop is blocked or spinning.

    :param silence: seconds since the last frame from the worker
    """

    def __init__(self, actor: str, pid: int | None, silence: float, timeout: float) -> None:
        super().__init__(actor, pid, f"no heartbeat for {silence:.3f} s (timeout {timeout} s): the worker is stuck")
        self.silence = silence
        self.timeout = timeout


class WorkerStartTimeout(WorkerFailed):
    """The worker did not report its actor started within ``start_timeout``."""

    def __init__(self, actor: str, pid: int | None, timeout: float) -> None:
        super().__init__(actor, pid, f"did not start within {timeout} s")
        self.timeout = timeout
