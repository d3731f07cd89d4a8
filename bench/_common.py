from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import sys
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import msgspec

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

#: Every bench figure is measured on both backends.
BACKENDS = ("asyncio", "trio")

#: Default number of runs; each run measures every figure and its floor once, interleaved.
FULL_RUNS = 7
QUICK_RUNS = 3


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the options every bench script accepts: ``--quick`` and ``--runs``.

    :param description: what the script measures (shown by ``--help``)
    :param argv: the arguments to parse; ``None`` reads ``sys.argv``
    :return: a namespace with ``quick`` (bool) and ``runs`` (int >= 1)
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smaller samples and fewer runs (whole run < 20 s)")
    parser.add_argument(
        "--runs", type=int, default=None, help=f"number of runs (default {FULL_RUNS}, with --quick {QUICK_RUNS})"
    )
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = QUICK_RUNS if args.quick else FULL_RUNS
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    return args


def progress(text: str) -> None:
    """Report progress on stderr (stdout carries only the JSON result)."""
    print(text, file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    """Return the median of a non-empty sequence.

    :raises ValueError: when ``values`` is empty
    """
    if not values:
        raise ValueError("median of an empty sequence: values must hold at least one sample")
    return float(statistics.median(values))


def parse_goal(goal: str) -> tuple[str, float]:
    """Split a goal such as ``">= 0.6"`` into its operator and bound.

    :raises ValueError: when the goal is not ``">= x"`` or ``"<= x"``
    """
    operator, _, bound = goal.strip().partition(" ")
    if operator not in (">=", "<="):
        raise ValueError(f"goal must be '>= x' or '<= x', got {goal!r}")
    return operator, float(bound)


def goal_met(ratio: float, goal: str) -> bool:
    """Return whether ``ratio`` satisfies ``goal`` (``">= x"`` or ``"<= x"``)."""
    operator, bound = parse_goal(goal)
    return ratio >= bound if operator == ">=" else ratio <= bound


def figure(
    name: str, backend: str, unit: str, values: Sequence[float], floors: Sequence[float], goal: str
) -> dict[str, Any]:
    """Build one figure of the bench contract from per-run samples of the figure and of its floor.

    ``value`` and ``floor`` are the medians over the runs and ``ratio = value / floor`` (``met`` is decided on it);
    ``run_ratios`` gives the ratio within each run, where figure and floor were measured back to back and so shared
    the machine's noise, and ``run_ratio_median`` their median: on a busy machine it is the steadier of the two.

    :param values: one sample of the figure per run
    :param floors: one sample of the floor per run, measured in the same runs
    :param goal: ``">= x"`` or ``"<= x"`` on the ratio
    :raises ValueError: when the sample lists differ in length or are empty
    """
    if len(values) != len(floors) or not values:
        raise ValueError(f"values and floors must be non-empty and of equal length, got {len(values)}/{len(floors)}")
    value = median(values)
    floor = median(floors)
    ratio = value / floor
    run_ratios = [v / f for v, f in zip(values, floors, strict=True)]
    return {
        "name": name,
        "backend": backend,
        "value": round(value, 3),
        "unit": unit,
        "floor": round(floor, 3),
        "ratio": round(ratio, 3),
        "goal": goal,
        "met": goal_met(ratio, goal),
        "run_ratio_median": round(median(run_ratios), 3),
        "run_ratios": [round(r, 3) for r in run_ratios],
        "samples": [round(v, 3) for v in values],
        "floor_samples": [round(f, 3) for f in floors],
    }


def interleaved(runs: int, measurements: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Run every measurement once per run, alternating their order, and collect one sample each per run.

    One warm-up pass comes first and is discarded (imports, caches, the allocator's first growth). Figures and
    floors run back to back in the same process so that machine noise hits both; the order is reversed on every
    other run so that neither always goes first (warm caches, CPU frequency).

    :param runs: how many samples to take of each measurement
    :param measurements: name -> a callable that measures once and returns the sample
    :return: name -> the samples, in run order
    """
    samples: dict[str, list[float]] = {name: [] for name in measurements}
    order = list(measurements)
    progress("warm-up: every measurement once, discarded")
    for name in order:
        measurements[name]()
    for run in range(runs):
        for name in order if run % 2 == 0 else reversed(order):
            gc.collect()
            samples[name].append(measurements[name]())
        progress(f"run {run + 1}/{runs}: " + ", ".join(f"{name}={samples[name][-1]:.4g}" for name in order))
    return samples


async def alternate(blocks: int, timed: dict[str, Callable[[], Awaitable[float]]]) -> dict[str, float]:
    """Inside one event loop, time short blocks of each measurement in turn; return each one's median block.

    The finest interleaving there is: a figure's block and its floor's block run milliseconds apart, so a burst of
    load from elsewhere on the machine hits both, and the medians of many short blocks shrug such bursts off. The
    order flips on every other block so that neither always goes first.

    :param blocks: how many blocks of each measurement to time
    :param timed: name -> an async callable that runs one block and returns its measure
    :return: name -> the median over its blocks
    """
    results: dict[str, list[float]] = {name: [] for name in timed}
    order = list(timed)
    for block in range(blocks):
        for name in order if block % 2 == 0 else reversed(order):
            results[name].append(await timed[name]())
    return {name: median(values) for name, values in results.items()}


def repeated(runs: int, measure: Callable[[int], dict[str, float]]) -> dict[str, list[float]]:
    """Call ``measure(run)`` once to warm up (discarded), then ``runs`` times; collect the samples it returns.

    :param runs: how many runs
    :param measure: takes the run's index, returns one sample per name (figures and floors alike)
    :return: name -> the samples, in run order
    """
    progress("warm-up run (discarded)")
    measure(0)
    samples: dict[str, list[float]] = {}
    for run in range(runs):
        gc.collect()
        for name, value in measure(run).items():
            samples.setdefault(name, []).append(value)
        progress(f"run {run + 1}/{runs}: " + ", ".join(f"{name}={values[-1]:.4g}" for name, values in samples.items()))
    return samples


def optional_module(name: str) -> Any | None:
    """Import an optional peer library for comparison, or return None when it is not installed.

    Typed ``Any`` on purpose: peers are not dependencies, so their type information may be absent.
    """
    if importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name)


def peer(name: str, backend: str, unit: str, samples: Sequence[float], **context: Any) -> dict[str, Any]:
    """Build the entry of an optional peer measured in the same run (context only: no floor, no goal)."""
    return {
        "name": name,
        "backend": backend,
        "value": round(median(samples), 3),
        "unit": unit,
        "samples": [round(sample, 3) for sample in samples],
        "optional": True,
        **context,
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Describe the machine and the packages a figure depends on (no paths, no host names)."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        # A shared machine: the 1-minute load when the result was printed says how busy it was meanwhile.
        "load_average_1m": round(os.getloadavg()[0], 2),
        "packages": {name: _version(name) for name in ("anyio", "trio", "msgspec")},
    }


def emit(bench: str, figures: list[dict[str, Any]], **context: Any) -> None:
    """Print the one JSON object of the bench contract to stdout.

    :param bench: the script's name (``"mailbox"``, ``"ask"``, ...)
    :param figures: as built by :func:`figure`
    :param context: extra fields (runs, sizes, peers, ...)
    """
    result: dict[str, Any] = {"bench": bench, "figures": figures, **environment(), **context}
    print(json.dumps(result, indent=2))


class _SentAt(msgspec.Struct):
    sent_ns: int = msgspec.field(name="sentNs", default=0)


class _FrameProbe(msgspec.Struct):
    metadata: _SentAt | None = None


#: Reads only the publish time out of a frame (msgspec skips every other field without building it).
_frame_probe = msgspec.json.Decoder(_FrameProbe)


def sent_ns_of(frame: str | bytes) -> int:
    """The publish time a bench producer put in an event (``metadata.sentNs``, ``perf_counter_ns``), read back from
    its wire frame; 0 when the frame carries none."""
    metadata = _frame_probe.decode(frame).metadata
    return metadata.sent_ns if metadata is not None else 0


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC


class PeriodicTicker:
    """Wakes its caller every ``interval`` seconds from a Linux timerfd, on any event loop.

    A paced producer that sleeps with ``anyio.sleep`` wakes on the event loop's timeout, which epoll takes in whole
    milliseconds, rounded up: asked for the rest of a 0.4 ms gap, the loop sleeps 1 ms. Such a producer publishes in
    bursts of 1 to 2 ms of traffic, and at half of saturation the last event of a burst waits for the whole burst
    ahead of it. A timerfd is a file descriptor that becomes readable on its own schedule (nanosecond timer, the
    kernel's usual slack): the loop wakes when it fires, as it wakes for a socket's data, so the producer publishes
    what is due every ``interval``, as a backend fed by many streams would.

    Build it with :meth:`open`, which returns None where there is no timerfd (not Linux).

    :param fd: a periodic timerfd, non-blocking (closed by :meth:`close`)
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def open(cls, interval: float) -> PeriodicTicker | None:
        """A ticker firing every ``interval`` seconds from now, or None where the system offers no timerfd (not
        Linux, or a kernel or sandbox that refuses one): the caller then paces some other way.

        :raises ValueError: when ``interval`` is not positive
        """
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        if not sys.platform.startswith("linux"):
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        seconds, nanoseconds = divmod(round(interval * 1e9), 1_000_000_000)
        period = _Timespec(seconds, nanoseconds)
        if libc.timerfd_settime(fd, 0, ctypes.byref(_Itimerspec(period, period)), None) != 0:
            os.close(fd)
            return None
        return cls(fd)

    @classmethod
    def available(cls, interval: float) -> bool:
        """Whether :meth:`open` gives a ticker of ``interval`` on this system (one is opened and closed)."""
        ticker = cls.open(interval)
        if ticker is None:
            return False
        ticker.close()
        return True

    async def wait(self) -> int:
        """Return at the next expiry (at once if one passed since the last call): how many expired meanwhile.

        Always a checkpoint: a producer that fell a tick behind still lets the loop run between two of its bursts.
        """
        try:
            expired = os.read(self._fd, 8)
        except BlockingIOError:
            pass
        else:
            await anyio.lowlevel.checkpoint()
            return int.from_bytes(expired, sys.byteorder)
        while True:
            await anyio.wait_readable(self._fd)
            try:
                return int.from_bytes(os.read(self._fd, 8), sys.byteorder)
            except BlockingIOError:
                continue

    def close(self) -> None:
        """Stop the timer and release its file descriptor."""
        os.close(self._fd)
