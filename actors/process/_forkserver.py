from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Final

import anyio
import msgspec

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger("agentwatch.process")

# A fork server: one process per parent, started once, that has imported the runtime (and, on first use, each
# factory's module) and forks a worker per request. A worker then costs a fork (milliseconds) instead of an
# interpreter start and its imports (a few hundred milliseconds of CPU, on a core the parent may need); every
# restart of a killed or stuck worker pays it. The chain parent -> fork server -> worker keeps every guarantee:
# each one dies with the one above (PR_SET_PDEATHSIG, end-of-file, a parent-pid watch); the fork server reaps its
# workers and reports each exit status to the parent, which waits for that report before calling a worker gone.

_EXIT: Final = struct.Struct("!ii")  # (pid, returncode): one exit report
_PID: Final = struct.Struct("!i")  # the fork server's reply to a request: the new worker's pid (< 0: -errno)
_MAX_REQUEST: Final = 1 << 20
#: Seconds an event loop waits for the fork server's answer to a request (it answers right after its fork).
_ANSWER_TIMEOUT: Final = 10.0
#: The module anyio loads to run each backend (what ``anyio.run(..., backend=name)`` imports on first use).
_BACKEND_MODULES: Final = {"asyncio": "anyio._backends._asyncio", "trio": "anyio._backends._trio"}


class ForkRequest(msgspec.Struct, frozen=True, array_like=True):
    """What to fork: the worker's arguments (its socket travels beside, as SCM_RIGHTS), the parent's import path,
    and the factory's module, imported in the fork server first so that the next workers inherit it."""

    argv: list[str]
    path: list[str]
    preload: str


class ForkServer:
    """The parent's handle on its fork server: forks workers (from the spawning thread) and collects their exits.

    :raises OSError: when the fork server cannot be started
    """

    def __init__(self) -> None:
        requests, requests_remote = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        exits, exits_remote = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        path = os.pathsep.join(entry or os.getcwd() for entry in sys.path)
        command = [
            sys.executable,
            "-m",
            "actors.process",
            "fork-server",
            str(requests_remote.fileno()),
            str(exits_remote.fileno()),
            str(os.getpid()),
        ]
        try:
            self._popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                pass_fds=(requests_remote.fileno(), exits_remote.fileno()),
                env={**os.environ, "PYTHONPATH": path},
            )
        finally:
            requests_remote.close()
            exits_remote.close()
        self._requests = requests
        self._exits = exits
        self._lock = threading.Lock()
        #: One request in flight at a time, from the spawning thread or from an event loop.
        self._request_lock = threading.Lock()
        self._returncodes: dict[int, int | None] = {}
        self._events: dict[int, threading.Event] = {}
        self.alive = True
        threading.Thread(target=self._collect_exits, name="agentwatch-fork-exits", daemon=True).start()

    @property
    def pid(self) -> int:
        """The fork server's own pid."""
        return self._popen.pid

    def fork(self, argv: Sequence[str], fd: int, preload: str) -> int:
        """Fork a worker running ``python -m actors.process <argv>`` with ``fd`` as its socket; return its pid.

        Called from the spawning thread (it waits for the fork server's answer).

        :raises OSError: when the fork server is gone or could not fork
        """
        with self._request_lock:
            self._request(argv, fd, preload)
            return self._answer()

    async def fork_from_loop(self, argv: Sequence[str], fd: int, preload: str) -> int | None:
        """:meth:`fork` from an event loop, which waits for the answer without a thread; None when another request
        is in flight (the caller then forks from the spawning thread).

        A restart then wakes no thread of this process: each thread that wakes while the event loop runs takes the
        GIL from it, and the bridge's deliveries wait (on a busy machine, for the scheduler to run that thread).

        :raises OSError: when the fork server is gone, could not fork, or did not answer within 10 s
        """
        if not self._request_lock.acquire(blocking=False):
            return None
        try:
            # One small datagram on a socket that holds no other: it never waits for room.
            self._request(argv, fd, preload)
            # Shielded: a request whose answer is left unread would hand its pid to the next request.
            with anyio.CancelScope(shield=True), anyio.move_on_after(_ANSWER_TIMEOUT):
                await anyio.wait_readable(self._requests)
            return self._answer(nonblocking=True)
        finally:
            self._request_lock.release()

    def _request(self, argv: Sequence[str], fd: int, preload: str) -> None:
        request = msgspec.msgpack.encode(ForkRequest(argv=list(argv), path=list(sys.path), preload=preload))
        socket.send_fds(self._requests, [request], [fd])

    def _answer(self, *, nonblocking: bool = False) -> int:
        try:
            reply = self._requests.recv(_PID.size, socket.MSG_DONTWAIT if nonblocking else 0)
        except BlockingIOError:
            reply = b""  # no answer in time: the fork server is stuck; it is replaced on the next start
        if len(reply) != _PID.size:
            self.alive = False
            raise OSError("the fork server is gone")
        pid: int = _PID.unpack(reply)[0]
        if pid < 0:
            raise OSError(-pid, os.strerror(-pid))
        with self._lock:
            self._events.setdefault(pid, threading.Event())
        return pid

    def returncode(self, pid: int) -> int | None:
        """The worker's exit status once the fork server reaped it (negative: the killing signal), else None."""
        with self._lock:
            return self._returncodes.get(pid)

    def exited(self, pid: int) -> threading.Event:
        """Set once the worker was reaped (or the fork server died, which takes its workers with it)."""
        with self._lock:
            return self._events.setdefault(pid, threading.Event())

    def forget(self, pid: int) -> None:
        """Drop what is kept about a worker whose exit was seen."""
        with self._lock:
            self._events.pop(pid, None)
            self._returncodes.pop(pid, None)

    def _collect_exits(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self._exits.recv(4096)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buffer += chunk
            while len(buffer) >= _EXIT.size:
                pid, returncode = _EXIT.unpack_from(buffer)
                buffer = buffer[_EXIT.size :]
                with self._lock:
                    self._returncodes[pid] = returncode
                    self._events.setdefault(pid, threading.Event()).set()
        # The fork server died: the kernel kills its workers with it (PR_SET_PDEATHSIG); their exits are unknown.
        self.alive = False
        with self._lock:
            for event in self._events.values():
                event.set()

    def close(self) -> None:
        """Stop the fork server (its workers die with it) and reap it."""
        self.alive = False
        with contextlib.suppress(OSError):
            self._requests.close()
        with contextlib.suppress(ProcessLookupError):
            self._popen.kill()
        self._popen.wait()
        with contextlib.suppress(OSError):
            self._exits.close()


_server: ForkServer | None = None


def running_fork_server() -> ForkServer | None:
    """This process's fork server if it was started and still runs (never starts one: see :func:`fork_server`)."""
    server = _server
    return server if server is not None and server.alive else None


def fork_server() -> ForkServer | None:
    """This process's fork server, started on first use (from the spawning thread); None if it cannot run."""
    global _server
    if _server is not None and _server.alive:
        return _server
    if not hasattr(socket, "send_fds") or not hasattr(os, "fork"):
        return None
    if _server is not None:
        _server.close()
    try:
        _server = ForkServer()
    except OSError as exc:
        logger.warning("no fork server (%s): workers start as new interpreters", exc)
        _server = None
        return None
    atexit.register(_server.close)
    return _server


# -- the fork server's side ---------------------------------------------------------------------------------------


def run_fork_server(requests_fd: int, exits_fd: int, parent: int) -> int:
    """The fork server's main loop: ``python -m actors.process fork-server <requests fd> <exits fd> <parent pid>``."""
    from ._worker import _die_with_parent, run_worker

    _die_with_parent(parent)
    requests = socket.socket(fileno=requests_fd)
    exits = socket.socket(fileno=exits_fd)
    report_lock = threading.Lock()
    children = threading.Semaphore(0)

    def reap() -> None:
        # One thread reaps every worker, in the order they end, and reports each exit status to the parent.
        while True:
            children.acquire()
            pid, status = os.wait()
            returncode = os.waitstatus_to_exitcode(status)
            with report_lock, contextlib.suppress(OSError):
                exits.sendall(_EXIT.pack(pid, returncode))

    threading.Thread(target=reap, name="agentwatch-reaper", daemon=True).start()
    while True:
        try:
            payload, fds, _, _ = socket.recv_fds(requests, _MAX_REQUEST, 1)
        except OSError:
            return 0
        if not payload:
            return 0  # the parent closed the link: it is gone, or done with us
        request = msgspec.msgpack.decode(payload, type=ForkRequest)
        sys.path[:] = request.path
        # The worker's socket has a number of its own here; and its parent, to die with, is this process.
        backend = request.argv[1]
        argv = [str(fds[0]), backend, str(os.getpid()), *request.argv[3:]]
        # The factory's module, and anyio's module for the worker's event loop: anyio imports it on the first
        # anyio.run(), which in a fresh worker meant trio and its dependencies, about 55 ms of CPU on every
        # (re)start of a trio worker (10 ms for asyncio) taken from the cores the parent runs on.
        for module in (request.preload, _BACKEND_MODULES.get(backend, "")):
            if module and module not in sys.modules:
                with contextlib.suppress(Exception):  # the worker reports an import failure itself
                    importlib.import_module(module)
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            requests.send(_PID.pack(-(exc.errno or 1)))
            continue
        if pid == 0:  # the worker
            code = 1
            try:
                requests.close()
                exits.close()
                code = run_worker(argv)
            finally:
                logging.shutdown()
                os._exit(code)
        for fd in fds:
            os.close(fd)
        children.release()
        requests.send(_PID.pack(pid))
