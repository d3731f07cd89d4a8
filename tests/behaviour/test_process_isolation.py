from __future__ import annotations

import os
import signal
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from actors import ActorFailed, ActorRef, ActorStartError, ActorSystem, open_actor_system
from actors.process import ActorRecipe, ProcessFault, ProcessHost, ProcessIsolation, RemoteError
from actors.process._forkserver import ForkServer, running_fork_server
from supervisors import Backoff, ChildSpec, Shutdown, SupervisorEventKind, SupervisorRef, start_supervisor
from tests.behaviour._process_kit import (
    Add,
    AskParent,
    Boom,
    Greeted,
    Greeting,
    Hello,
    Introduce,
    Journal,
    Lifecycle,
    Remember,
    Report,
    Total,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

# Real clock throughout: these tests run real worker processes. Heartbeats are fast so that a stuck worker is
# found in a fraction of a second; every wait is a poll with a guard against a hang, never a timing assertion.
pytestmark = pytest.mark.anyio

KIT = "tests.behaviour._process_kit"
FAST = ProcessIsolation(heartbeat_interval=0.05, heartbeat_timeout=0.5, stop_timeout=1.0, terminate_timeout=0.5)
GUARD = 20.0


def counter(
    child_id: str = "counter", *, stop_delay: float = 0.0, ignore_sigterm: bool = False, **options: Any
) -> ChildSpec:
    options.setdefault("shutdown", 3.0)
    options.setdefault("isolation", FAST)
    recipe = ActorRecipe(f"{KIT}:build_counter", 0, "journal", stop_delay, ignore_sigterm)
    return ChildSpec(child_id, recipe, **options)


class Tree:
    def __init__(self, system: ActorSystem, supervisor: SupervisorRef, journal: ActorRef[Any]) -> None:
        self.system = system
        self.supervisor = supervisor
        self.journal = journal

    def ref(self, child_id: str = "counter") -> ActorRef[Any]:
        return self.system.lookup(f"tree/{child_id}")

    def host(self, child_id: str = "counter") -> ProcessHost:
        instance = self.ref(child_id).current_instance
        assert isinstance(instance, ProcessHost)
        return instance

    def pid(self, child_id: str = "counter") -> int:
        pid = self.host(child_id).pid
        assert pid is not None
        return pid

    def kinds(self, child_id: str = "counter") -> list[SupervisorEventKind]:
        return [event.kind for event in self.supervisor.events.history() if event.child_id == child_id]

    def reasons(self, kind: SupervisorEventKind, child_id: str = "counter") -> list[str]:
        history = self.supervisor.events.history()
        return [event.reason for event in history if event.child_id == child_id and event.kind is kind]

    async def got(self) -> list[Any]:
        got: list[Any] = await self.journal.ask("got")
        return got

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        with anyio.fail_after(GUARD):  # a guard against a hang, not a timing assertion
            while not predicate():  # noqa: ASYNC110  # polling real processes
                await anyio.sleep(0.01)

    async def wait_restarted(self, times: int = 1, child_id: str = "counter") -> None:
        await self.wait_for(lambda: self.kinds(child_id).count(SupervisorEventKind.RESTARTED) >= times)


@asynccontextmanager
async def open_tree(*children: ChildSpec, intensity: int = 10) -> AsyncIterator[Tree]:
    async with open_actor_system() as system:
        journal = await system.start(Journal, name="journal")
        supervisor = await start_supervisor(system, name="tree", intensity=intensity, period=10.0, children=children)
        tree = Tree(system, supervisor, journal)
        yield tree
        await supervisor.stop()


def assert_reaped(pid: int) -> None:
    """The process ended and its parent reaped it: no zombie left, nothing running under that pid."""
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # not (or no longer) a child of ours: a zombie would be reaped here instead
    assert not Path(f"/proc/{pid}").exists()


class TestProcessRef:
    async def test_tell_and_ask_worker_actor_handles_in_order_replies_with_declared_types(self) -> None:
        async with open_tree(counter()) as tree:
            ref = tree.ref()
            for value in range(1, 11):
                ref.tell(Add(value=value))
            assert await ref.ask(Total()) == 55
            reports = [message for message in await tree.got() if isinstance(message, Report)]
            assert [report.total for report in reports] == [sum(range(1, n + 1)) for n in range(1, 11)]
            assert {report.pid for report in reports} == {tree.pid()} != {os.getpid()}
            # The worker's actor asks a parent actor; the long list answer crosses in slices and arrives whole.
            assert await ref.ask(AskParent(n=5000)) == list(range(5000))
            assert tree.host().forwarded == 12
            assert tree.kinds() == [SupervisorEventKind.STARTED]

    async def test_tells_of_interleaved_types_cross_in_runs_handled_in_order(self) -> None:
        async with open_tree(counter()) as tree:
            ref = tree.ref()
            # More than a frame and a drain batch hold (within the host's mailbox), in runs of two types, with an
            # ask behind them all.
            for value in range(1, 881):
                ref.tell(Add(value=1))
                if value % 110 == 0:
                    ref.tell(Greeting(text=f"after {value}"))
            assert await ref.ask(Greeted()) == "after 880"
            assert await ref.ask(Total()) == 880
            await tree.wait_for(lambda: sum(isinstance(m, Report) for m in tree.journal.current_instance.got) == 880)
            assert [m.total for m in await tree.got() if isinstance(m, Report)] == list(range(1, 881))
            assert tree.host().forwarded == 880 + 8 + 2
            assert tree.ref().statistics().dropped_total == 0

    async def test_tell_that_does_not_encode_dead_lettered_rest_of_its_run_delivered(self) -> None:
        async with open_tree(counter()) as tree:
            ref = tree.ref()
            ref.tell(Add(value=1))
            ref.tell(Greeting(text="\ud800"))  # a lone surrogate: no UTF-8 for MessagePack
            ref.tell(Greeting(text="kept"))
            ref.tell(Add(value=2))
            assert await ref.ask(Greeted()) == "kept"
            assert await ref.ask(Total()) == 3
            assert tree.system.dead_letters.count("unencodable") == 1
            assert tree.kinds() == [SupervisorEventKind.STARTED]

    async def test_refs_cross_boundary_worker_own_ref_arrives_as_host_parent_ref_by_name(self) -> None:
        async with open_tree(counter()) as tree:
            ref = tree.ref()
            ref.tell(Add(value=7))
            ref.tell(Introduce())
            await tree.wait_for(lambda: any(isinstance(m, Hello) for m in tree.journal.current_instance.got))
            hello = next(m for m in await tree.got() if isinstance(m, Hello))
            assert hello.ref is ref  # the worker's own ref is, in the parent, the ref of its host
            # The journal answered the hello through that ref: the greeting went down to the worker.
            assert await ref.ask(Greeted()) == f"hello {tree.pid()}"
            ref.tell(Remember(ref=tree.journal))  # a parent ref going down comes back up as the same actor
            await tree.wait_for(lambda: sum(isinstance(m, Report) for m in tree.journal.current_instance.got) == 2)
            assert [m.total for m in await tree.got() if isinstance(m, Report)] == [7, 7]

    async def test_ask_handler_raises_asker_gets_remote_cause_and_worker_restarted(self) -> None:
        async with open_tree(counter()) as tree:
            ref = tree.ref()
            ref.tell(Add(value=3))
            first = tree.pid()
            with pytest.raises(ActorFailed) as failed:
                await ref.ask(Boom())
            assert isinstance(failed.value.cause, RemoteError)
            assert failed.value.cause.error_type == "RuntimeError"
            assert "boom in the worker" in str(failed.value.cause)
            assert "Traceback" in failed.value.cause.remote_traceback
            await tree.wait_restarted()
            assert tree.pid() != first
            assert await ref.ask(Total()) == 0  # a new instance: the state went with the old worker
            assert_reaped(first)

    async def test_worker_ask_to_parent_actor_times_out_in_the_host(self) -> None:
        # The host answers a worker's ask with a timeout scope of its own (the reply never waits in the parent's
        # ask-deadline heap): a parent actor that answers too late still fails the worker's ask when its timeout
        # passes, and the late answer goes nowhere.
        async with open_tree(counter()) as tree:
            ref = tree.ref()
            with pytest.raises(ActorFailed) as failed:
                await ref.ask(AskParent(n=-1, timeout=0.2), timeout=GUARD)
            assert isinstance(failed.value.cause, RemoteError)
            assert failed.value.cause.error_type == "AskTimeout"
            await tree.wait_restarted()
            assert await ref.ask(AskParent(n=3)) == [0, 1, 2]

    async def test_message_not_in_schema_dead_lettered_worker_unaffected(self) -> None:
        async with open_tree(counter()) as tree:
            ref = tree.ref()
            ref.tell("not in the schema")
            ref.tell(Add(value=2))
            assert await ref.ask(Total()) == 2
            assert tree.system.dead_letters.count("not_in_schema") == 1
            assert tree.kinds() == [SupervisorEventKind.STARTED]

    async def test_tells_while_restarting_queue_in_host_mailbox_reach_next_worker(self) -> None:
        backoff = Backoff(min=0.3, max=0.3, jitter=0.0)
        async with open_tree(counter(backoff=backoff)) as tree:
            ref = tree.ref()
            first = tree.pid()
            os.kill(first, signal.SIGKILL)
            await tree.wait_for(lambda: ref.state == "restarting")
            for value in (1, 2, 3):
                ref.tell(Add(value=value))  # the ref is stable: these wait in its mailbox for the next worker
            await tree.wait_restarted()
            assert await ref.ask(Total()) == 6
            assert tree.pid() != first


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


class TestStartMethods:
    @pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
    async def test_start_method_worker_works_killed_restarted_reaped(self, start_method: str) -> None:
        isolation = msgspec.structs.replace(FAST, start_method=start_method)
        async with open_tree(counter(isolation=isolation)) as tree:
            first = tree.pid()
            # A fork server's worker is its child; a spawned one is ours.
            assert (parent_of(first) == os.getpid()) is (start_method == "spawn")
            tree.ref().tell(Add(value=4))
            assert await tree.ref().ask(Total()) == 4
            os.kill(first, signal.SIGKILL)
            await tree.wait_restarted()
            assert await tree.ref().ask(Total()) == 0
            assert_reaped(first)


class TestForkServer:
    async def test_restart_forked_from_event_loop_not_spawning_thread(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # Once the fork server runs, a restart asks it from the event loop: no thread of ours wakes for it (each one
        # that wakes takes the GIL from the event loop that the bridge shares).
        threaded: list[int] = []
        original = ForkServer.fork

        def fork(server: ForkServer, argv: Sequence[str], fd: int, preload: str) -> int:
            pid = original(server, argv, fd, preload)
            threaded.append(pid)
            return pid

        monkeypatch.setattr(ForkServer, "fork", fork)
        async with open_tree(counter()) as tree:
            first = tree.pid()
            started_from_thread = len(threaded)  # the first start may have had to start the fork server
            os.kill(first, signal.SIGKILL)
            await tree.wait_restarted()
            assert await tree.ref().ask(Total()) == 0
            assert parent_of(tree.pid()) != os.getpid()  # forked by the fork server
            assert len(threaded) == started_from_thread
            assert_reaped(first)

    async def test_fork_from_loop_request_in_flight_returns_none(self) -> None:
        async with open_tree(counter()):
            server = running_fork_server()
            assert server is not None
            with server._request_lock:  # a request of the spawning thread in flight
                assert await server.fork_from_loop(["unused"], 0, "") is None


class TestCpuPriority:
    @pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
    async def test_nice_and_idle_scheduling_applied_to_worker_kept_after_restart(self, start_method: str) -> None:
        idle = msgspec.structs.replace(FAST, nice=3, scheduling="idle", start_method=start_method)
        niced = msgspec.structs.replace(FAST, nice=7, start_method=start_method)
        async with open_tree(counter("idle", isolation=idle), counter("niced", isolation=niced)) as tree:
            own = os.getpriority(os.PRIO_PROCESS, 0)
            assert os.sched_getscheduler(tree.pid("idle")) == os.SCHED_IDLE
            assert os.sched_getscheduler(tree.pid("niced")) == os.SCHED_OTHER
            assert os.getpriority(os.PRIO_PROCESS, tree.pid("niced")) == min(19, own + 7)
            first = tree.pid("idle")
            os.kill(first, signal.SIGKILL)
            await tree.wait_restarted(child_id="idle")
            assert tree.pid("idle") != first
            assert os.sched_getscheduler(tree.pid("idle")) == os.SCHED_IDLE
            assert await tree.ref("idle").ask(Total()) == 0  # an idle-scheduled worker still works


class TestProcessSupervision:
    async def test_nonzero_exit_failure_restarted_with_new_worker(self) -> None:
        async with open_tree(counter()) as tree:
            first = tree.pid()
            tree.ref().tell(ProcessFault(kind="exit", exit_code=3))
            await tree.wait_restarted()
            assert "exited with code 3" in tree.reasons(SupervisorEventKind.FAILED)[0]
            assert tree.pid() != first
            assert await tree.ref().ask(Total()) == 0
            assert_reaped(first)

    async def test_sigkill_restarted_then_detached_after_budget(self) -> None:
        spec = counter(critical=False, intensity=1, period=30.0, detach_cooldown=60.0)
        async with open_tree(spec, intensity=1) as tree:
            pids = [tree.pid()]
            os.kill(pids[0], signal.SIGKILL)
            await tree.wait_restarted()
            pids.append(tree.pid())
            os.kill(pids[1], signal.SIGKILL)
            await tree.wait_for(lambda: SupervisorEventKind.DETACHED in tree.kinds())
            assert all("killed by SIGKILL" in reason for reason in tree.reasons(SupervisorEventKind.FAILED))
            assert tree.ref().state == "detached"
            assert SupervisorEventKind.ESCALATED not in [e.kind for e in tree.supervisor.events.history()]
            for pid in pids:
                assert_reaped(pid)

    async def test_spinning_worker_misses_heartbeats_killed_and_restarted(self) -> None:
        async with open_tree(counter()) as tree:
            first = tree.pid()
            tree.ref().tell(ProcessFault(kind="spin"))
            await tree.wait_restarted()
            assert "no heartbeat" in tree.reasons(SupervisorEventKind.FAILED)[0]
            assert await tree.ref().ask(Total()) == 0
            assert_reaped(first)

    async def test_hanging_handler_cut_by_handler_timeout_in_worker(self) -> None:
        async with open_tree(counter(handler_timeout=0.2)) as tree:
            tree.ref().tell(ProcessFault(kind="hang"))
            await tree.wait_restarted()
            assert "deadline of 0.2 s" in tree.reasons(SupervisorEventKind.FAILED)[0]

    async def test_hanging_host_cut_by_its_own_longer_deadline(self) -> None:
        # A fault injected into the host itself (interceptors instrument the local instance behind the ref): the
        # worker is fine and keeps its heartbeats, so only the host's own deadline can end the hang.
        class HangOnMarker:
            def instrument(self, actor: Any) -> None:
                original = actor.receive

                async def receive(message: Any) -> Any:
                    if message == "hang the host":
                        await anyio.sleep_forever()
                    return await original(message)

                actor.receive = receive

        async with open_tree(counter(handler_timeout=0.1)) as tree:
            first = tree.pid()
            tree.ref().add_interceptor(HangOnMarker())
            tree.ref().tell("hang the host")
            await tree.wait_restarted()
            assert "deadline of 0.7 s" in tree.reasons(SupervisorEventKind.FAILED)[0]  # 2 x 0.1 + 0.5
            assert tree.pid() != first
            assert_reaped(first)

    async def test_worker_start_failure_raised_as_start_error(self, tmp_path: Path) -> None:
        marker = tmp_path / "ran"
        spec = ChildSpec("refuses", ActorRecipe(f"{KIT}:build_refusing", str(marker)), isolation=FAST, shutdown=3.0)
        async with open_actor_system() as system:
            await system.start(Journal, name="journal")
            with pytest.raises(ActorStartError) as failed:
                await start_supervisor(system, name="tree", children=[spec])
            assert "refusing to start" in repr(failed.value.cause)
            assert marker.exists()  # the worker did run the factory


class TestShutdown:
    @pytest.mark.parametrize(
        ("stop_delay", "ignore_sigterm", "returncode", "stopped"),
        [
            pytest.param(0.0, False, 0, True, id="graceful"),
            pytest.param(5.0, False, -signal.SIGTERM, False, id="then-terminate"),
            pytest.param(5.0, True, -signal.SIGKILL, False, id="then-kill"),
        ],
    )
    async def test_terminate_child_graceful_then_terminate_then_kill_always_reaped(
        self, stop_delay: float, ignore_sigterm: bool, returncode: int, stopped: bool
    ) -> None:
        async with open_tree(counter(stop_delay=stop_delay, ignore_sigterm=ignore_sigterm)) as tree:
            host = tree.host()
            pid = tree.pid()
            await tree.supervisor.terminate_child("counter")
            assert host.returncode == returncode
            assert_reaped(pid)
            lifecycle = [m.event for m in await tree.got() if isinstance(m, Lifecycle)]
            assert lifecycle == (["started", "stopped"] if stopped else ["started"])

    async def test_brutal_shutdown_kills_at_once_and_reaps(self) -> None:
        async with open_tree(counter(shutdown=Shutdown.BRUTAL)) as tree:
            host = tree.host()
            pid = tree.pid()
            await tree.supervisor.terminate_child("counter")
            await tree.wait_for(lambda: host.returncode is not None)  # reaped by its link task, in the background
            assert host.returncode == -signal.SIGKILL
            assert_reaped(pid)

    async def test_cancelled_parent_task_leaves_no_worker_behind(self) -> None:
        pids: list[int] = []
        with anyio.CancelScope() as scope:
            async with open_actor_system() as system:
                await system.start(Journal, name="journal")
                await start_supervisor(system, name="tree", children=[counter("a"), counter("b", ignore_sigterm=True)])
                for child_id in ("a", "b"):
                    host = system.lookup(f"tree/{child_id}").current_instance
                    assert isinstance(host, ProcessHost)
                    assert host.pid is not None
                    pids.append(host.pid)
                scope.cancel()
                await anyio.sleep_forever()
        assert scope.cancelled_caught
        for pid in pids:
            assert_reaped(pid)
