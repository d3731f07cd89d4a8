from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread

from ._forkserver import ForkServer, fork_server, running_fork_server

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

logger = logging.getLogger("agentwatch.process")

_spawner: ThreadPoolExecutor | None = None
#: Seconds between two looks for the fork server's exit report, doubling up to the last (63 ms in all).
_REPORT_POLL: Final = 0.0005
_REPORT_POLL_MAX: Final = 0.032
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

    Forked by the fork server (``start_method="forkserver"``; the fork server reaps it and reports its exit), or
    started as a new interpreter (``"spawn"``, or when there is no fork server), a child of this process.
    """

    __slots__ = ("_pidfd", "_popen", "_returncode", "_server", "pid")

    def __init__(
        self, pid: int, *, popen: subprocess.Popen[bytes] | None = None, server: ForkServer | None = None
    ) -> None:
        self.pid = pid
        self._popen = popen
        self._server = server
        self._returncode: int | None = None
        self._pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):  # no pidfd_open (not Linux, or Linux < 5.3)
            self._pidfd = os.pidfd_open(pid)

    @classmethod
    async def start(
        cls, argv: Sequence[str], *, fd: int, env: dict[str, str], preload: str, start_method: str
    ) -> WorkerProcess:
        """Start ``python -m actors.process <argv>`` with ``fd`` as its socket.

        Asked of the fork server from the event loop once it runs; otherwise (its first start, a new interpreter)
        from the spawning thread.

        :param preload: the module the fork server imports before forking (the factory's), for later workers
        """

        if start_method == "forkserver":
            server = running_fork_server()
            if server is not None:
                try:
                    pid = await server.fork_from_loop(argv, fd, preload)
                except OSError as exc:
                    logger.warning("the fork server failed (%s): starting it again", exc)
                else:
                    if pid is not None:
                        return cls(pid, server=server)

        def spawn() -> WorkerProcess:
            if start_method == "forkserver":
                server = fork_server()
                if server is not None:
                    try:
                        return cls(server.fork(argv, fd, preload), server=server)
                    except OSError as exc:
                        logger.warning("the fork server failed (%s): starting a new interpreter instead", exc)
            command = [sys.executable, "-m", "actors.process", *argv]
            popen = subprocess.Popen(command, stdin=subprocess.DEVNULL, pass_fds=(fd,), env=env)
            return cls(popen.pid, popen=popen)

        future = _spawn_thread().submit(spawn)
        worker: WorkerProcess = await anyio.to_thread.run_sync(future.result)
        return worker

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative: the signal that killed it), else None."""
        if self._popen is not None:
            return self._popen.returncode
        return self._returncode

    def send_signal(self, signum: int) -> None:
        """Signal the process unless it was already reaped (its pid may belong to another process by then)."""
        if self.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, OSError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signum)  # race-free: never reaches a recycled pid
            else:
                os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL."""
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM."""
        self.send_signal(signal.SIGTERM)

    async def wait(self) -> int:
        """Wait for the process to exit and be reaped; return its exit status. One waiter at a time."""
        if self.returncode is None:
            if self._pidfd is not None:
                await anyio.wait_readable(self._pidfd)  # readable once the process has exited
            if self._popen is not None:
                if self._pidfd is not None:
                    self._popen.wait()  # reaps it: returns at once
                else:
                    await _wait_in_thread(self._popen.wait)
            else:
                assert self._server is not None
                exited = self._server.exited(self.pid)
                if not exited.is_set() and self._pidfd is not None:
                    # The fork server reaps, then reports: a moment after the pidfd. Polled from the loop for a
                    # while rather than waited for in a thread, whose waking would take the GIL from the loop.
                    delay = _REPORT_POLL
                    while not exited.is_set() and delay <= _REPORT_POLL_MAX:
                        await anyio.sleep(delay)
                        delay *= 2
                if not exited.is_set():
                    await _wait_in_thread(exited.wait)
                returncode = self._server.returncode(self.pid)
                # No report: the fork server died, and the kernel killed its workers with it.
                self._returncode = returncode if returncode is not None else -signal.SIGKILL
                self._server.forget(self.pid)
        self._close_pidfd()
        returncode = self.returncode
        assert returncode is not None
        return returncode

    def _close_pidfd(self) -> None:
        pidfd, self._pidfd = self._pidfd, None
        if pidfd is not None:
            os.close(pidfd)

    def __del__(self, _close: Any = os.close) -> None:
        if self._pidfd is not None:
            _close(self._pidfd)


async def _wait_in_thread(wait: Callable[[], object]) -> None:
    # A thread of its own, with a limiter of its own: never queued behind anyio's 40 default tokens.
    await anyio.to_thread.run_sync(wait, abandon_on_cancel=True, limiter=anyio.CapacityLimiter(1))
