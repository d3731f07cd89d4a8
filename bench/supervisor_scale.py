from __future__ import annotations

import gc
import time
from typing import Any

import anyio
from _common import BACKENDS, emit, figure, median, parse_args, progress

from actors import Actor, open_actor_system
from supervisors import ChildSpec, start_supervisor

#: Dynamic children per measurement; the figure compares the per-child cost at the largest and smallest size.
SIZES = (1_000, 5_000, 10_000)


class Idle(Actor[Any]):
    """A trivial child: it only waits for messages."""

    async def receive(self, message: Any) -> None:
        return None


async def start_and_stop(size: int) -> tuple[float, float]:
    """Start ``size`` dynamic children one ``start_child`` at a time, then stop the supervisor (and so all of them).

    :return: µs per child to start them all, and µs per child to stop the supervisor
    """
    specs = [ChildSpec(f"child-{i}", Idle) for i in range(size)]
    async with open_actor_system() as system:
        supervisor = await start_supervisor(system, name="scale")
        start = time.perf_counter()
        for spec in specs:
            await supervisor.start_child(spec)
        started = time.perf_counter()
        counts = await supervisor.count_children()
        assert counts.active == size, counts
        resumed = time.perf_counter()
        await supervisor.stop()
        stopped = time.perf_counter()
        assert system.names() == [], "a child outlived its supervisor"
    return (started - start) / size * 1e6, (stopped - resumed) / size * 1e6


def measure(runs: int) -> dict[tuple[str, str, int], list[float]]:
    """One sample of every (backend, size) per run, alternating the order so that no size always goes first.

    :return: (phase, backend, size) -> the samples in µs per child, phase ``start`` or ``stop``
    """
    order = [(backend, size) for backend in BACKENDS for size in SIZES]
    samples: dict[tuple[str, str, int], list[float]] = {}
    for run in range(runs):
        for backend, size in order if run % 2 == 0 else reversed(order):
            gc.collect()
            start, stop = anyio.run(start_and_stop, size, backend=backend)
            samples.setdefault(("start", backend, size), []).append(start)
            samples.setdefault(("stop", backend, size), []).append(stop)
        progress(
            f"run {run + 1}/{runs}: "
            + ", ".join(
                f"{backend} {size}: start {samples['start', backend, size][-1]:.1f} "
                f"stop {samples['stop', backend, size][-1]:.1f} µs/child"
                for backend, size in order
            )
        )
    return samples


def main() -> None:
    args = parse_args("Start and stop a supervisor's dynamic children at 1k, 5k and 10k: µs per child must stay flat.")
    progress(f"supervisor scale bench: {args.runs} runs, sizes {SIZES}")
    samples = measure(args.runs)
    smallest, largest = SIZES[0], SIZES[-1]
    figures = [
        figure(
            f"{phase} per child, {largest // 1000}k vs {smallest // 1000}k children",
            backend,
            "µs/child",
            samples[phase, backend, largest],
            samples[phase, backend, smallest],
            "<= 1.5",
        )
        for phase in ("start", "stop")
        for backend in BACKENDS
    ]
    per_size: dict[str, Any] = {
        f"{phase}/{backend}": {str(size): round(median(samples[phase, backend, size]), 3) for size in SIZES}
        for phase in ("start", "stop")
        for backend in BACKENDS
    }
    emit("supervisor_scale", figures, runs=args.runs, quick=args.quick, sizes=list(SIZES), us_per_child=per_size)


if __name__ == "__main__":
    main()
