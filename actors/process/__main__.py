from __future__ import annotations

import sys

from actors.process._worker import run_worker

if __name__ == "__main__":
    # The worker process, started by ProcessHost:
    # ``python -m actors.process <socket fd> <backend> <parent pid> <nice>``.
    sys.exit(run_worker())
