from __future__ import annotations

import argparse
import itertools
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import msgspec
from _common import BACKENDS, emit, figure, median, parse_args, progress, sent_ns_of

from actors import ActorError
from actors.chat._connection import MemorySink
from actors.chat._events import (
    AgentEvent,
    RunFinished,
    RunStarted,
    StampedEvent,
    TextMessageContent,
    TextMessageEnd,
    TextMessageStart,
    stamp,
)
from actors.chat._monitor import CheckHealth, MonitorConfig
from actors.process import ProcessFault, ProcessHost, ProcessIsolation
from supervisors import BridgeSettings, RuntimeConfig, SupervisionSettings
from supervisors.app import open_runtime

if TYPE_CHECKING:
    from collections.abc import Callable

    from actors import ActorRef
    from supervisors.app import Runtime

THREADS = 20
CONNECTIONS_PER_THREAD = 5
#: Events per second published during the latency blocks, in chunks of PACED_CHUNK with one sleep per chunk.
RATE = 4000.0
PACED_CHUNK = 8
#: Every latency block publishes this long. A fault block starts with its fault (one per block: one kill or one
#: spin per second), and lasts longer only if the new worker has not caught up by then.
BLOCK_SECONDS = 1.0
#: The monitor's worker as the application runs it (its CPU priority may be overridden from the command line).
DEFAULT_PROCESS = RuntimeConfig().monitor_process
#: Events told per chunk in the tap-throughput figure (one yield per chunk, as the bridge's batches give).
CHUNK = 256
TAP_GOAL = 100_000.0
COST_GOAL_US = 3.0

FULL = {"runs": 4, "spins": 6, "kills": 25, "tap_blocks": 12, "tap_events": 20_000, "cost_blocks": 30}
QUICK = {"runs": 1, "spins": 1, "kills": 1, "tap_blocks": 2, "tap_events": 10_000, "cost_blocks": 6}


def fast_heartbeats(process: ProcessIsolation) -> ProcessIsolation:
    """The monitor's worker in the latency blocks: fast heartbeats, so that a spinning one is replaced within a
    fraction of a second. The tap figures keep the defaults: a worker starved of CPU on a loaded machine must not
    be taken for a stuck one in the middle of a throughput block."""
    return msgspec.structs.replace(process, heartbeat_interval=0.05, heartbeat_timeout=0.3)


def config(isolation: str, process: ProcessIsolation | None = None) -> RuntimeConfig:
    """The application tree under test: audits off, one frame per event, a restart budget no fault block exhausts."""
    return RuntimeConfig(
        monitor_isolation="process" if isolation == "process" else "task",
        monitor_process=process if process is not None else DEFAULT_PROCESS,
        monitor=MonitorConfig(audit_interval=0),
        bridge=BridgeSettings(coalesce_at=None, replay_capacity=256),
        supervision=SupervisionSettings(monitor_intensity=100_000, monitor_period=1.0),
    )


def run_events(thread_id: str, run_id: str) -> list[AgentEvent]:
    """The 20 events of one chat run: started, a streamed answer, finished."""
    answer = f"{run_id}:answer"
    return [
        RunStarted(thread_id=thread_id, run_id=run_id),
        TextMessageStart(message_id=answer, role="assistant"),
        *(TextMessageContent(message_id=answer, delta="Here is what I found. ") for _ in range(17)),
        TextMessageEnd(message_id=answer),
        RunFinished(thread_id=thread_id, run_id=run_id),
    ]


class Traffic:
    """Paced runs on every thread of one bridge, timed at the sinks; latencies go to the arm being measured."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.threads = [f"t{i:02d}" for i in range(THREADS)]
        self.sinks: list[MemorySink] = []
        self.published = 0
        self.runs = itertools.count(1)
        self.pending: list[tuple[str, str, AgentEvent]] = []
        #: Per arm, the latencies (ns) of each block: a block's p99 is one sample of its arm.
        self.blocks: dict[str, list[list[int]]] = {}
        self.current: list[int] = []
        self.arm = "warm-up"

    async def connect(self) -> None:
        clock = time.perf_counter_ns

        def timed(send: Callable[[str], Any]) -> Callable[[str], Any]:
            async def send_text(data: str) -> None:
                await send(data)
                done = clock()
                sent_ns = sent_ns_of(data)
                if sent_ns:
                    self.current.append(done - sent_ns)

            return send_text

        bridge = self.runtime.bridge
        for thread_id in self.threads:
            for _ in range(CONNECTIONS_PER_THREAD):
                sink = MemorySink(keep_frames=False)
                sink.send_text = timed(sink.send_text)  # type: ignore[method-assign, assignment]
                connection = await bridge.connect(sink, principal="bench")
                await bridge.subscribe(connection, thread_id)
                self.sinks.append(sink)

    def _next_events(self, count: int) -> list[tuple[str, str, AgentEvent]]:
        while len(self.pending) < count:
            for thread_id in self.threads:
                run_id = f"run-{next(self.runs)}"
                self.pending.extend((thread_id, run_id, event) for event in run_events(thread_id, run_id))
        taken, self.pending = self.pending[:count], self.pending[count:]
        return taken

    async def block(self, arm: str, until: Callable[[float], bool]) -> None:
        """Publish at RATE until ``until(elapsed seconds)``; then wait until every frame reached every sink."""
        self.arm = arm
        self.current = []
        self.blocks.setdefault(arm, []).append(self.current)
        publish = self.runtime.bridge.publish
        replace = msgspec.structs.replace
        interval = PACED_CHUNK / RATE
        begin = anyio.current_time()
        chunk = 0
        while not until(anyio.current_time() - begin):
            delay = begin + chunk * interval - anyio.current_time()
            if delay > 0:
                await anyio.sleep(delay)
            else:
                await anyio.lowlevel.checkpoint()
            sent_ns = time.perf_counter_ns()
            for thread_id, run_id, event in self._next_events(PACED_CHUNK):
                publish(thread_id, run_id, replace(event, metadata={"sentNs": sent_ns}))
            self.published += PACED_CHUNK
            chunk += 1
        await self.wait_delivered()

    def delivered(self) -> int:
        return sum(sink.sent for sink in self.sinks) // CONNECTIONS_PER_THREAD

    async def wait_delivered(self) -> None:
        with anyio.fail_after(30):  # a guard: a lost event fails the bench instead of hanging it
            while self.delivered() < self.published:  # noqa: ASYNC110  # sinks count, they do not signal
                await anyio.sleep(0.001)


def p99_ms(latencies: list[int]) -> float:
    """The 99th percentile (nearest rank) of latencies in ns, in ms."""
    ordered = sorted(latencies)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] / 1e6


def _host(ref: ActorRef[Any]) -> ProcessHost | None:
    instance = ref.current_instance
    return instance if isinstance(instance, ProcessHost) and ref.state == "running" else None


async def fault_block(traffic: Traffic, kind: str) -> None:
    """Spin or SIGKILL the monitor's worker, and publish for BLOCK_SECONDS, or until a new worker has started,
    rebuilt and caught up if that takes longer.

    Caught up: the new worker has answered an ask queued behind the taps told meanwhile. So the restart's whole
    cost (detection, spawn, replay snapshot, the backlog) falls inside the fault's block, none in the next baseline.
    """
    ref = traffic.runtime.monitor_ref()
    assert ref is not None
    with anyio.fail_after(30):  # a monitor restarted by something else than our fault: let it finish first
        while (host := _host(ref)) is None or host.pid is None:  # noqa: ASYNC110  # polling the host
            await anyio.sleep(0.01)
    caught_up = anyio.Event()

    async def wait_caught_up() -> None:
        previous = host
        while True:
            while (current := _host(ref)) is None or current is previous:  # noqa: ASYNC110  # polling the host
                await anyio.sleep(0.005)
            try:
                await ref.ask(CheckHealth(), timeout=30)
            except ActorError:
                # The new worker failed too (starved of CPU past its heartbeat timeout on a busy machine): one more
                # restart, counted in the JSON as restarts beyond the faults; wait for the next one.
                previous = current
                continue
            caught_up.set()
            return

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(wait_caught_up)
        if kind == "spin":
            ref.tell(ProcessFault(kind="spin"))
        else:
            os.kill(host.pid, signal.SIGKILL)
        await traffic.block(kind, lambda elapsed: elapsed >= BLOCK_SECONDS and caught_up.is_set())


async def latency_arms(sizes: dict[str, int], process: ProcessIsolation) -> dict[str, Any]:
    """Baseline blocks alternating with spin and kill blocks, on one bridge with its monitor in a worker process."""
    async with open_runtime(config("process", fast_heartbeats(process))) as runtime:
        traffic = Traffic(runtime)
        await traffic.connect()
        await traffic.block("warm-up", lambda elapsed: elapsed >= BLOCK_SECONDS / 2)
        faults = ["spin"] * sizes["spins"] + ["kill"] * sizes["kills"]
        # Spread the spins among the kills, each fault block after a baseline block.
        order = sorted(range(len(faults)), key=lambda i: (i * 7919) % len(faults))
        paired: dict[str, list[float]] = {"spin": [], "kill": []}
        for index in order:
            await traffic.block("baseline", lambda elapsed: elapsed >= BLOCK_SECONDS)
            await fault_block(traffic, faults[index])
            kind = faults[index]
            # The fault block against the no-fault block just before it: a drift of the machine's load over the
            # run (another job starting) hits both alike.
            paired[kind].append(p99_ms(traffic.blocks[kind][-1]) / p99_ms(traffic.blocks["baseline"][-1]))
        restarts = sum(1 for e in runtime.events.history() if e.child_id == "monitor" and e.kind.value == "restarted")
        metrics = await runtime.bridge.get_metrics()
        assert not metrics.dropped, f"the bridge dropped events: {metrics.dropped}"
        delivered = traffic.delivered()
        published = traffic.published
    result: dict[str, Any] = {"restarts": restarts, "delivered": delivered / published}
    for arm in ("baseline", "spin", "kill"):
        blocks = traffic.blocks[arm]
        # Each block's p99, and the median block: a block that the OS preempted (other jobs on a shared machine)
        # is an outlier the median ignores, as in the other benches' alternating blocks.
        result[f"p99/{arm}"] = median([p99_ms(block) for block in blocks])
        result[f"pooled p99/{arm}"] = p99_ms([latency for block in blocks for latency in block])
        result[f"samples/{arm}"] = sum(len(block) for block in blocks)
    for kind, ratios in paired.items():
        result[f"paired ratios/{kind}"] = ratios
    return result


class Taps:
    """Fresh stamped events for one monitor (new runs every block: replaying old ones would raise anomalies)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seq: dict[str, int] = {}
        self.runs = itertools.count(1)

    def block(self, count: int, now_ms: int) -> list[StampedEvent]:
        events: list[StampedEvent] = []
        while len(events) < count:
            thread_id = f"{self.name}-t{len(events) // 20 % 100}"
            run_id = f"{self.name}-run-{next(self.runs)}"
            for event in run_events(thread_id, run_id):
                seq = self.seq[thread_id] = self.seq.get(thread_id, 0) + 1
                events.append(stamp(event, thread_id=thread_id, run_id=run_id, seq=seq, observed_at=now_ms))
        return events[:count] if len(events) == count else events


async def tap_throughput(ref: ActorRef[Any], events: list[StampedEvent]) -> float:
    """Events/s from the first tap until the monitor has handled the last (an ask queued behind them answers)."""
    tell = ref.tell
    half = ref.statistics().mailbox.capacity // 2
    start = time.perf_counter()
    for begin in range(0, len(events), CHUNK):
        for event in events[begin : begin + CHUNK]:
            tell(event)
        await anyio.lowlevel.checkpoint()
        while ref.statistics().queued >= half:
            await anyio.lowlevel.checkpoint()
    await ref.ask(CheckHealth(), timeout=60)
    return len(events) / (time.perf_counter() - start)


async def tap_cost(ref: ActorRef[Any], events: list[StampedEvent]) -> tuple[float, float]:
    """(this process's CPU µs per tapped event until the monitor answered, wall µs of the bare tell loop)."""
    tell = ref.tell
    cpu = time.process_time_ns()
    wall = time.perf_counter_ns()
    for event in events:
        tell(event)
    told = time.perf_counter_ns() - wall
    await ref.ask(CheckHealth(), timeout=60)
    return (time.process_time_ns() - cpu) / len(events) / 1000, told / len(events) / 1000


def worker_cpu_seconds(ref: ActorRef[Any]) -> float | None:
    """CPU seconds used so far by the worker behind a process host (from /proc; None elsewhere)."""
    host = ref.current_instance
    if not isinstance(host, ProcessHost) or host.pid is None:
        return None
    try:
        fields = Path(f"/proc/{host.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def tap_figures(sizes: dict[str, int], process: ProcessIsolation) -> dict[str, float]:
    """Throughput and cost of the tap into a process monitor, against the same into a task monitor.

    On a machine whose cores are shared with other jobs, the worker may wait for a CPU: its own CPU time per event
    (from /proc) is recorded beside the wall-clock throughput, to tell a slow pipeline from a starved one.
    """
    result: dict[str, list[float]] = {}
    async with open_runtime(config("process", process)) as in_process, open_runtime(config("task")) as task:
        refs = {"process": in_process.monitor_ref(), "task": task.monitor_ref()}
        taps = {name: Taps(name) for name in refs}
        now_ms = in_process.system.clock.now_ms()
        for name, ref in refs.items():  # warm-up: caches, allocator, the worker's first decodes
            assert ref is not None
            await tap_throughput(ref, taps[name].block(2_000, now_ms))
        for block in range(sizes["tap_blocks"]):
            for name in refs if block % 2 == 0 else reversed(list(refs)):
                ref = refs[name]
                assert ref is not None
                events = taps[name].block(sizes["tap_events"], now_ms)
                cpu_before = worker_cpu_seconds(ref)
                result.setdefault(f"throughput/{name}", []).append(await tap_throughput(ref, events))
                cpu_after = worker_cpu_seconds(ref)
                if cpu_before is not None and cpu_after is not None:
                    worker_us = (cpu_after - cpu_before) / len(events) * 1e6
                    result.setdefault("worker cpu/process", []).append(worker_us)
        for block in range(sizes["cost_blocks"]):
            for name in refs if block % 2 == 0 else reversed(list(refs)):
                ref = refs[name]
                assert ref is not None
                cpu, told = await tap_cost(ref, taps[name].block(5_000, now_ms))
                result.setdefault(f"cost/{name}", []).append(cpu)
                result.setdefault(f"tell/{name}", []).append(told)
        for name, ref in refs.items():
            assert ref is not None
            stats = ref.statistics()
            assert stats.dropped_total == 0, f"the {name} monitor's mailbox dropped taps: {stats.dropped}"
        restarts = [e for e in in_process.events.history() if e.child_id == "monitor" and e.kind.value == "restarted"]
    medians = {name: median(values) for name, values in result.items()}
    medians["tap restarts"] = float(len(restarts))  # a worker taken for stuck mid-block: the block is suspect
    return medians


async def measure_backend(sizes: dict[str, int], process: ProcessIsolation) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = await tap_figures(sizes, process)
    tapped = time.perf_counter()
    result |= await latency_arms(sizes, process)
    progress(f"  tap figures {tapped - started:.1f} s, latency arms {time.perf_counter() - tapped:.1f} s")
    return result


def worker_priority(argv: list[str]) -> tuple[ProcessIsolation, list[str]]:
    """Read ``--worker-nice N`` and ``--worker-scheduling normal|idle`` (the monitor's worker's CPU priority, the
    application's default otherwise); return the worker's settings and the other arguments."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--worker-nice", type=int, default=DEFAULT_PROCESS.nice)
    parser.add_argument("--worker-scheduling", choices=("normal", "idle"), default=DEFAULT_PROCESS.scheduling)
    known, rest = parser.parse_known_args(argv)
    process = msgspec.structs.replace(DEFAULT_PROCESS, nice=known.worker_nice, scheduling=known.worker_scheduling)
    return process, rest


def main() -> None:
    process, rest = worker_priority(sys.argv[1:])
    args = parse_args(
        "Process isolation: the bridge's p99 with a spinning or killed monitor process, the tap into a process monitor."
        " Also --worker-nice N and --worker-scheduling normal|idle: the monitor's worker's CPU priority (default: the"
        " application's).",
        rest,
    )
    sizes = dict(QUICK if args.quick else FULL)
    runs = args.runs if args.runs != (3 if args.quick else 7) else sizes["runs"]
    progress(f"isolation bench: {runs} runs of {sizes}")
    samples: dict[str, list[Any]] = {}
    for run in range(runs):
        for backend in BACKENDS if run % 2 == 0 else reversed(BACKENDS):
            result = anyio.run(measure_backend, sizes, process, backend=backend)
            for name, value in result.items():
                samples.setdefault(f"{name}/{backend}", []).append(value)
            progress(
                f"run {run + 1}/{runs} {backend}: p99 baseline {result['p99/baseline']:.3f} ms, spin "
                f"{result['p99/spin']:.3f} ms, kill {result['p99/kill']:.3f} ms, tap "
                f"{result['throughput/process']:.0f}/s, cost {result['cost/process']:.2f} us"
            )

    def paired_median(kind: str, backend: str) -> float:
        # Each fault block's p99 over the p99 of the no-fault block just before it, median over every pair of
        # every run: context beside the figure (whose ratio is of the medians over blocks).
        ratios = [ratio for run in samples[f"paired ratios/{kind}/{backend}"] for ratio in run]
        return round(median(ratios), 3)

    figures = []
    for backend in BACKENDS:

        def s(name: str, backend: str = backend) -> list[float]:
            return [float(value) for value in samples[f"{name}/{backend}"]]

        baseline = s("p99/baseline")
        spin = figure("p99 with spinning monitor", backend, "ms", s("p99/spin"), baseline, "<= 1.1")
        pooled_baseline = median(s("pooled p99/baseline"))
        spin |= {
            "method": "median over 1 s blocks (each starting with a spin) of each block's p99",
            "pooled_p99_ms": round(median(s("pooled p99/spin")), 3),
            "pooled_baseline_p99_ms": round(pooled_baseline, 3),
            "faults": sizes["spins"] * runs,
            "fault": "the monitor's worker runs `while True: pass`; missed heartbeats, SIGKILL, restart",
            "latency_samples": sum(s("samples/spin")),
            "baseline_samples": sum(s("samples/baseline")),
            "paired_ratio_median": paired_median("spin", backend),
        }
        delivered = min(s("delivered"))
        kill = figure("p99 with killed monitor", backend, "ms", s("p99/kill"), baseline, "<= 1.1")
        kill |= {
            "method": "median over 1 s blocks (each starting with a SIGKILL: one kill per second) of each block's p99",
            "pooled_p99_ms": round(median(s("pooled p99/kill")), 3),
            "pooled_baseline_p99_ms": round(pooled_baseline, 3),
            "faults": sizes["kills"] * runs,
            "fault": "SIGKILL of the monitor's worker process, then its restart and rebuild",
            "delivered": delivered,
            "latency_samples": sum(s("samples/kill")),
            "monitor_restarts": sum(s("restarts")),
            # A worker taken for stuck while it was only starved of CPU: a restart no fault asked for.
            "restarts_beyond_faults": sum(s("restarts")) - (sizes["spins"] + sizes["kills"]) * runs,
            "paired_ratio_median": paired_median("kill", backend),
        }
        kill["met"] = kill["met"] and delivered == 1.0
        throughput = figure(
            "tap throughput", backend, "events/s", s("throughput/process"), s("throughput/task"), ">= 0"
        )
        worker_us = median(s("worker cpu/process")) if f"worker cpu/process/{backend}" in samples else None
        throughput |= {
            "goal": f">= {TAP_GOAL:.0f} events/s",
            "met": throughput["value"] >= TAP_GOAL,
            "floor_is": "the same taps into a task (in-process) monitor",
            "worker_cpu_us_per_event": round(worker_us, 3) if worker_us is not None else None,
            "worker_cpu_bound_events_per_s": round(1e6 / worker_us) if worker_us else None,
            "monitor_restarts_during_blocks": sum(s("tap restarts")),
        }
        cost = figure("tap cost", backend, "µs", s("cost/process"), s("tell/task"), ">= 0")
        cost |= {
            "goal": f"<= {COST_GOAL_US} µs",
            "met": cost["value"] <= COST_GOAL_US,
            "measured": "this process's CPU per tapped event: tell, the host's batching, encoding and writing",
            "floor_is": "the bare tell into a task monitor's mailbox (wall time of the tell loop)",
            "task_monitor_cpu_us": round(median(s("cost/task")), 3),
            "process_tell_us": round(median(s("tell/process")), 3),
        }
        figures += [spin, kill, throughput, cost]
    emit(
        "isolation",
        figures,
        runs=runs,
        quick=args.quick,
        sizes=sizes,
        threads=THREADS,
        connections=THREADS * CONNECTIONS_PER_THREAD,
        rate_events_per_s=RATE,
        heartbeat={
            "interval": fast_heartbeats(process).heartbeat_interval,
            "timeout": fast_heartbeats(process).heartbeat_timeout,
        },
        worker_nice=process.nice,
        worker_scheduling=process.scheduling,
        worker_start_method=process.start_method,
    )


if __name__ == "__main__":
    main()
