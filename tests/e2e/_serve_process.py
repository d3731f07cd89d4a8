from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:(\d+)/)")


class ServeProcess:
    """``agentwatch serve`` running as a subprocess, as a user starts it."""

    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url

    def stop(self, sig: signal.Signals = signal.SIGTERM, *, timeout: float = 20.0) -> tuple[int, str, str]:
        """Send ``sig`` and wait for the exit; return the exit code, the rest of stdout and stderr."""
        self.process.send_signal(sig)
        stdout, stderr = self.process.communicate(timeout=timeout)
        return self.process.returncode, stdout, stderr


@contextmanager
def serve(*args: str, timeout: float = 20.0) -> Iterator[ServeProcess]:
    """Start ``agentwatch serve --port 0 ARGS`` (the kernel picks a free port, the command prints it) and wait
    until ``/readyz`` answers 200. The process is killed if the block leaves it running."""
    process = subprocess.Popen(
        [sys.executable, "-m", "supervisors.cli", "serve", "--host", "127.0.0.1", "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = _LISTENING.search(line)
        assert match is not None, (
            f"unexpected first line {line!r}; stderr: {process.stderr.read() if process.stderr else ''}"
        )
        url = match[1]
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(url + "readyz", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready in time"
            time.sleep(0.05)
        yield ServeProcess(process, url)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
