from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
from _common import BACKENDS, emit, figure, interleaved, median, parse_args, progress

from actors import Actor, open_actor_system
from supervisors import ChildSpec, Strategy, start_supervisor

#: The crash message; every other message is a follow-up whose handling ends one measurement.
CRASH = "crash"
#: Restarts before measuring (imports, caches and free lists warm up).
WARMUP = 50


class _Crash(Exception):
    """The failure both the supervised child and the bare task raise."""


class _Probe:
    """Where the child stamps the moment a follow-up was handled, and by which instance."""

    __slots__ = ("done", "handled_at", "instance")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.handled_at = 0.0
        self.instance: object = None


class Crashy(Actor[str]):
    """A supervised child that raises on ``CRASH`` and stamps the probe on anything else."""

    def __init__(self, probe: _Probe) -> None:
        self.probe = probe

    async def receive(self, message: str) -> None:
        if message == CRASH:
            raise _Crash
        probe = self.probe
        probe.handled_at = time.perf_counter()
        probe.instance = self
        probe.done.set()


async def supervised_restart(restarts: int) -> float:
    """Median µs from telling a child ``CRASH`` (with a follow-up right behind it) to its replacement handling
    the follow-up; one_for_one, no backoff."""
    probe = _Probe()
    async with open_actor_system() as system:
        supervisor = await start_supervisor(
            system,
            name="bench",
            strategy=Strategy.ONE_FOR_ONE,
            intensity=restarts + WARMUP + 1,  # a budget no run can exhaust: restarts are measured, never escalated
            period=3600.0,
            children=[ChildSpec("crashy", lambda: Crashy(probe))],
        )
        ref = system.lookup("bench/crashy")
        ref.tell("first")
        await probe.done.wait()
        latencies: list[float] = []
        for i in range(WARMUP + restarts):
            before = probe.instance
            probe.done = anyio.Event()
            start = time.perf_counter()
            ref.tell(CRASH)
            ref.tell("follow-up")
            await probe.done.wait()
            assert probe.instance is not before, "the follow-up was handled by the crashed instance"
            if i >= WARMUP:
                latencies.append(probe.handled_at - start)
        counts = await supervisor.count_children()
        assert counts.active == 1, counts
        await supervisor.stop()
    return median(latencies) * 1e6


class _Slot:
    """What the bare parent, its child task and the measuring task share."""

    __slots__ = ("crash", "done", "follow_up", "handled_at")

    def __init__(self) -> None:
        self.crash = anyio.Event()
        self.done = anyio.Event()
        self.follow_up = False
        self.handled_at = 0.0


async def _bare_child(slot: _Slot) -> None:
    if slot.follow_up:  # the message queued behind the crash: the new task handles it first
        slot.follow_up = False
        slot.handled_at = time.perf_counter()
        slot.done.set()
    await slot.crash.wait()
    slot.crash = anyio.Event()
    raise _Crash


async def _bare_parent(slot: _Slot) -> None:
    while True:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_bare_child, slot)
        except* _Crash:
            pass  # the whole of this "supervisor": see the failure, start a new task


async def bare_restart(restarts: int) -> float:
    """The floor: a bare anyio task group whose child task raises, and a new task that handles the follow-up.

    Median µs from the crash signal to the new task running, measured exactly as :func:`supervised_restart`.
    """
    slot = _Slot()
    latencies: list[float] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(_bare_parent, slot)
        await anyio.lowlevel.checkpoint()  # the first child now waits for its crash signal
        for i in range(WARMUP + restarts):
            slot.done = anyio.Event()
            slot.follow_up = True
            start = time.perf_counter()
            slot.crash.set()
            await slot.done.wait()
            if i >= WARMUP:
                latencies.append(slot.handled_at - start)
        tg.cancel_scope.cancel()
    return median(latencies) * 1e6


def main() -> None:
    args = parse_args("Restart latency of a supervised child against a bare task group child raising.")
    restarts = 300 if args.quick else 2_000
    # As an application runs it: every restart's log records are created (the library logs each failure at
    # WARNING) and handled by whatever is configured; here only the library's own NullHandler.
    if not logging.getLogger("agentwatch").handlers:
        logging.getLogger("agentwatch").addHandler(logging.NullHandler())
    measurements: dict[str, Any] = {}
    for backend in BACKENDS:
        measurements[f"restart/{backend}"] = partial(anyio.run, supervised_restart, restarts, backend=backend)
        measurements[f"restart floor/{backend}"] = partial(anyio.run, bare_restart, restarts, backend=backend)
    progress(f"restart bench: {args.runs} runs, {restarts} restarts per sample (median per sample)")
    samples = interleaved(args.runs, measurements)
    figures = [
        figure(
            "restart latency",
            backend,
            "µs",
            samples[f"restart/{backend}"],
            samples[f"restart floor/{backend}"],
            "<= 2",
        )
        for backend in BACKENDS
    ]
    emit("restart", figures, runs=args.runs, quick=args.quick, restarts_per_sample=restarts, warmup=WARMUP)


if __name__ == "__main__":
    main()
