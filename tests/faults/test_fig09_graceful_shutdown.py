from __future__ import annotations

import anyio
import pytest

from actors import open_actor_system
from actors.chat._connection import CloseCode
from actors.chat._events import RunFinished, RunStarted, TextMessageContent
from supervisors.app import ROOT, open_runtime
from supervisors.faults import BridgeClient, FaultHistory, check_delivery
from tests.conftest import virtual_time
from tests.faults._harness import fast_config, logs, report

pytestmark = pytest.mark.anyio

# Figure 9: the application shuts down while runs are streaming and some clients read slowly. Every client gets
# every event published before the shutdown, its run's terminal event last, then a 1001 close, within 2 s; and the
# runtime leaves no actor (hence no task) behind in the system it ran in.
THREADS = 10
CLIENTS_PER_THREAD = 3
DEADLINE = 2.0


def live_tasks(backend: str) -> int:
    """How many tasks the event loop runs now (backend-specific introspection: tests only)."""
    if backend == "trio":
        import trio.lowlevel

        def count(task: trio.lowlevel.Task) -> int:
            return 1 + sum(count(child) for nursery in task.child_nurseries for child in nursery.child_tasks)

        root = trio.lowlevel.current_root_task()
        assert root is not None
        return count(root)
    import asyncio

    return len(asyncio.all_tasks())


class TestGracefulShutdown:
    @virtual_time
    async def test_shutdown_mid_stream_every_client_gets_terminal_events_then_1001_within_2s_nothing_left(
        self, anyio_backend_name: str
    ) -> None:
        history = FaultHistory()
        tasks_before = live_tasks(anyio_backend_name)
        async with open_actor_system() as system:
            names_before = set(system.names())
            clients: list[BridgeClient] = []
            last: dict[str, int] = {}
            async with open_runtime(fast_config(), system=system) as runtime:
                for index in range(THREADS):
                    thread_id = f"t{index}"
                    for number in range(CLIENTS_PER_THREAD):
                        client = BridgeClient(runtime.bridge, principal="p", name=f"{thread_id}/c{number}")
                        client.history = history
                        # A third of the clients read slowly: they still have frames queued at the shutdown.
                        await client.connect(rate=10.0 if number == 0 else None)
                        await client.subscribe(thread_id)
                        clients.append(client)
                for index in range(THREADS):
                    thread_id = f"t{index}"
                    runtime.bridge.publish(thread_id, "r1", RunStarted(thread_id=thread_id, run_id="r1"))
                    for delta in range(40):
                        runtime.bridge.publish(thread_id, "r1", TextMessageContent(message_id="m", delta=f"{delta}"))
                    runtime.bridge.publish(thread_id, "r1", RunFinished(thread_id=thread_id, run_id="r1"))
                    last[thread_id] = 42
                await anyio.sleep(0.05)  # mid-stream: the slow readers are far from done
                shutdown_at = anyio.current_time()
            # The runtime is gone; the actor system it ran in holds nothing of it.
            leftovers = sorted(set(system.names()) - names_before)
        tasks_after = live_tasks(anyio_backend_name)

        check_delivery(logs(clients), last_seqs=last).raise_for_problems()
        for client in clients:
            deliveries = client.log.deliveries
            assert deliveries[-1].type == "RUN_FINISHED", client.name
            assert [close.code for close in client.log.closes] == [CloseCode.GOING_AWAY], client.name
            closed_at = client.log.closes[-1].at
            assert deliveries[-1].at <= closed_at <= shutdown_at + DEADLINE, client.name
        assert leftovers == [], f"actors left behind by the runtime: {leftovers} (of {ROOT})"
        assert tasks_after == tasks_before
        report(
            "fig9",
            clients=len(clients),
            events=sum(last.values()),
            last_close_after_s=round(max(c.log.closes[-1].at for c in clients) - shutdown_at, 6),
            leftovers=len(leftovers),
            tasks_before=tasks_before,
            tasks_after=tasks_after,
        )
