from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

if TYPE_CHECKING:
    from collections.abc import Sequence

_spawner: ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def _spawn_thread() -> ThreadPoolExecutor:
    # One long-lived thread forks every worker. Not the event loop's thread: fork/exec waits until the child has
    # exec'd, which on a loaded machine is the scheduler's delay, tens of ms of a stalled loop. Not a pool thread
    # either: a worker asks the kernel to kill it when the thread that forked it exits (PR_SET_PDEATHSIG), and
    # anyio's pool retires idle threads. This one lives as long as the interpreter.
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentwatch-spawn")
        return _spawner


class WorkerProcess:
    """A worker process, started off the event loop and awaited without blocking it (a pidfd where available).

    :param popen: the started process
    """

    __slots__ = ("_pidfd", "_popen", "pid")

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self._pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):  # no pidfd_open (not Linux, or Linux < 5.3)
            self._pidfd = os.pidfd_open(popen.pid)

    @classmethod
    async def start(cls, command: Sequence[str], *, pass_fds: Sequence[int], env: dict[str, str]) -> WorkerProcess:
        """Start ``command`` from the spawning thread; stdout goes to stderr, stdin is /dev/null."""

        def spawn() -> subprocess.Popen[bytes]:
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, pass_fds=pass_fds, env=env)

        future = _spawn_thread().submit(spawn)
        return cls(await anyio.to_thread.run_sync(future.result))

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative: the signal that killed it), else None."""
        return self._popen.returncode

    def send_signal(self, signum: int) -> None:
        """Signal the process unless it was already reaped (its pid may belong to another process by then)."""
        if self._popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL."""
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM."""
        self.send_signal(signal.SIGTERM)

    async def wait(self) -> int:
        """Wait for the process to exit and reap it; return its exit status. One waiter at a time."""
        if self._popen.returncode is None:
            if self._pidfd is not None:
                await anyio.wait_readable(self._pidfd)  # readable once the process has exited
                self._popen.wait()  # reaps it: returns at once
            else:
                # A thread for the worker's lifetime, with a limiter of its own: never queued behind anyio's 40.
                limiter = anyio.CapacityLimiter(1)
                await anyio.to_thread.run_sync(self._popen.wait, abandon_on_cancel=True, limiter=limiter)
        self._close_pidfd()
        returncode: int = self._popen.returncode
        return returncode

    def _close_pidfd(self) -> None:
        pidfd, self._pidfd = self._pidfd, None
        if pidfd is not None:
            os.close(pidfd)

    def __del__(self, _close: Any = os.close) -> None:
        if self._pidfd is not None:
            _close(self._pidfd)
