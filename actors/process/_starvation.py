from __future__ import annotations

from typing import Final

import msgspec

# A worker falls silent for one of two reasons: its loop is stuck (spinning, blocked in a call, deadlocked), or it
# is starved of CPU (a busy machine, and a worker that runs at a low priority — SCHED_IDLE, a high nice — by design).
# Restarting a starved worker helps nobody: the new one is starved too, and its start and rebuild cost CPU the
# machine does not have. The kernel tells them apart: a starved task waits on a run queue, a stuck one either runs
# (spinning) or sleeps (blocked), and a live loop that gets any CPU sends its overdue heartbeat at once.

#: A starved worker is given this many heartbeat timeouts of silence, at most, before it is failed all the same.
STARVED_GRACE: Final = 10


class CpuTimes(msgspec.Struct, frozen=True):
    """A thread's scheduler accounting (Linux ``/proc/<pid>/schedstat``), in seconds.

    :param ran: time spent on a CPU
    :param waited: time spent runnable on a run queue, waiting for a CPU
    """

    ran: float
    waited: float


def cpu_times(pid: int) -> CpuTimes | None:
    """The scheduler accounting of the main thread of process ``pid`` (a worker's event loop), or None where the
    kernel does not give it (not Linux, no schedstats) or the process is gone."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as stat:
            ran, waited, _slices = stat.read().split()
    except (OSError, ValueError):
        return None
    return CpuTimes(ran=int(ran) / 1e9, waited=int(waited) / 1e9)


def starved(since: CpuTimes, now: CpuTimes, window: float, timeout: float) -> bool:
    """Whether a worker that was silent throughout ``window`` seconds was starved of CPU rather than stuck.

    Starved: it waited for a CPU for at least half the window, and ran for less than half a heartbeat timeout
    (a spinning loop that gets that much CPU is stuck however busy the machine; a loop blocked in a call does not
    wait on a run queue at all).

    :param since: the worker's accounting at the start of the window
    :param now: its accounting now
    :param window: seconds between the two samples
    :param timeout: the heartbeat timeout
    """
    return now.waited - since.waited >= window / 2 and now.ran - since.ran < timeout / 2
