from __future__ import annotations

import sys

from actors.process._forkserver import run_fork_server
from actors.process._worker import run_worker

if __name__ == "__main__":
    # Started by ProcessHost: a worker,
    # ``python -m actors.process <socket fd> <backend> <parent pid> <nice> <scheduling>``, or
    # the fork server that forks them, ``python -m actors.process fork-server <requests fd> <exits fd> <parent pid>``.
    if sys.argv[1:2] == ["fork-server"]:
        sys.exit(run_fork_server(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
    sys.exit(run_worker())
