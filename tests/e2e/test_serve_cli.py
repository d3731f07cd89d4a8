from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from ._serve_process import ROOT, serve

BACKENDS = pytest.mark.parametrize("backend", ["asyncio", "trio"])


class TestServeCommand:
    @BACKENDS
    def test_simulated_agents_flow_to_a_ws_client_and_sigterm_closes_it_1001_then_exits_0(self, backend: str) -> None:
        with serve("--backend", backend, "--simulate", "3") as server:
            ws_url = server.url.replace("http://", "ws://") + "ws"
            with connect(ws_url, open_timeout=5) as ws:
                assert json.loads(ws.recv(timeout=5))["name"] == "agentwatch.connected"
                ws.send(json.dumps({"subscribe": {"threadId": "demo/agent-1"}}))
                events: list[dict[str, Any]] = []
                while len(events) < 5:
                    decoded = json.loads(ws.recv(timeout=10))
                    if decoded.get("name", "").startswith("agentwatch."):
                        continue
                    events.append(decoded)
                metrics = httpx.get(server.url + "metrics", timeout=5).text
                code, stdout, _ = server.stop(signal.SIGTERM)
                close_code = _close_code(ws)
        assert code == 0
        assert "stopped" in stdout
        assert close_code == 1001
        seqs = [event["metadata"]["seq"] for event in events]
        assert seqs == sorted(seqs)
        assert {event["metadata"]["threadId"] for event in events} == {"demo/agent-1"}
        accepted = next(
            line for line in metrics.splitlines() if line.startswith("agentwatch_bridge_events_accepted_total")
        )
        assert float(accepted.split()[-1]) > 0

    def test_sigint_stops_with_exit_130(self) -> None:
        with serve() as server:
            code, stdout, _ = server.stop(signal.SIGINT)
        assert code == 130
        assert "stopped" in stdout

    def test_port_in_use_is_a_usage_error(self) -> None:
        with serve() as server:
            port = server.url.rsplit(":", 1)[1].strip("/")
            result = subprocess.run(
                [sys.executable, "-m", "supervisors.cli", "serve", "--port", port],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        assert result.returncode == 2
        assert "cannot listen on 127.0.0.1:" in result.stderr


def _close_code(ws: ClientConnection) -> int | None:
    """Read until the server closes the connection; return its close code."""
    try:
        while True:
            ws.recv(timeout=10)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None
