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

        Called from the spawning thread only (one request at a time).

        :raises OSError: when the fork server is gone or could not fork
        """
        request = msgspec.msgpack.encode(ForkRequest(argv=list(argv), path=list(sys.path), preload=preload))
        socket.send_fds(self._requests, [request], [fd])
        reply = self._requests.recv(_PID.size)
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
        argv = [str(fds[0]), request.argv[1], str(os.getpid()), *request.argv[3:]]
        if request.preload:
            with contextlib.suppress(Exception):  # the worker reports an import failure itself
                importlib.import_module(request.preload)
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
