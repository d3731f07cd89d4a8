from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from typing import IO, TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
import msgspec

from actors import virtual_time_backend
from actors.sim._faults import FAULT_CATALOG, FaultSpecError, parse_duration, parse_fault
from actors.sim._plan import SimulationSpec, plan_simulation
from actors.sim._report import SimulationReport, failed_criteria, render_summary

from ._sim_driver import (
    BOTH_BACKENDS,
    VIRTUAL_EPOCH_MS,
    combine_backends,
    simulate,
    simulate_on_both_backends,
    simulate_with_facts,
)
from ._sim_presets import PRESETS, FigureChecks, Preset, SimulationSettings, preset_settings
from ._sim_run import Progress, SupervisionTally

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._sim_figures import RunFacts

    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "PRESETS",
    "VIRTUAL_EPOCH_MS",
    "FigureChecks",
    "Preset",
    "Progress",
    "SimulationSettings",
    "SupervisionTally",
    "add_parser",
    "main",
    "preset_settings",
    "run",
    "settings_from_args",
    "simulate",
    "simulate_on_both_backends",
]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130


def add_parser(subparsers: _Subparsers) -> None:
    """Register ``agentwatch simulate`` (sets ``handler`` to :func:`run`)."""
    parser = subparsers.add_parser(
        "simulate",
        help="drive simulated agents and clients through the real runtime, inject faults, score detection",
        description="Drive simulated agent runs and chat clients through the real bridge, monitor and supervisors, "
        "inject faults, and report what was delivered and what was detected against ground truth. "
        "Docs: docs/simulation.md.",
        epilog="exit status: 0 every criterion holds, 1 a criterion failed (named on stderr), 2 usage error, "
        "130 interrupted (a partial report is written first). Fault syntax: NAME[:ARG,...], ARG one of P%, "
        "count=N, every=DUR (offset=DUR), at=DUR, or an option (duration=, delay=, seconds=, messages=). Faults: "
        + ", ".join(FAULT_CATALOG),
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a built-in simulation (see docs/simulation.md)")
    parser.add_argument("--duration", type=_duration, metavar="DUR", help="traffic, in simulated seconds (or 10m)")
    parser.add_argument("--threads", type=_count, metavar="N", help="chat threads carrying agent runs")
    parser.add_argument("--clients", type=_count, metavar="N", help="simulated clients (0 allowed)")
    parser.add_argument("--seed", type=int, metavar="N", help="the seed (same seed, same report on the virtual clock)")
    parser.add_argument(
        "--fault", action="append", default=[], metavar="SPEC", help="add a fault, e.g. stuck_tool:2%% (repeatable)"
    )
    parser.add_argument(
        "--clock", choices=("virtual", "real"), help="default: virtual (the fig presets: real, see docs/simulation.md)"
    )
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio", help="default: asyncio")
    parser.add_argument(
        "--monitor-isolation",
        choices=("task", "process"),
        help="run the monitor as an actor in this loop (task, the default) or in a child process (needs --clock real)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    parser.add_argument("--report", metavar="FILE", help="also write the JSON report to FILE")
    parser.set_defaults(handler=run)


def _duration(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def settings_from_args(args: argparse.Namespace) -> SimulationSettings:
    """Build the settings a command line asks for.

    :raises FaultSpecError: for a bad ``--fault`` (or a schedule that does not fit the traffic)
    :raises ValueError: for figures out of range
    """
    overrides: dict[str, Any] = {
        name: getattr(args, name)
        for name in ("duration", "threads", "clients", "seed")
        if getattr(args, name) is not None
    }
    if args.preset is not None:
        settings = preset_settings(args.preset, clock=args.clock, faults=tuple(args.fault), **overrides)
    else:
        spec = SimulationSpec(faults=tuple(parse_fault(text) for text in args.fault), **overrides)
        settings = SimulationSettings(spec=spec, clock=args.clock or "virtual")
    if settings.checks.compare_backends and settings.clock != "virtual":
        raise ValueError(f"--preset {settings.preset} compares asyncio with trio, which needs the virtual clock")
    isolation = getattr(args, "monitor_isolation", None)
    if isolation is not None:
        if isolation == "process" and settings.clock != "real":
            raise ValueError(
                "--monitor-isolation process needs --clock real (a virtual clock does not cross process boundaries)"
            )
        settings = msgspec.structs.replace(
            settings, runtime=msgspec.structs.replace(settings.runtime, monitor_isolation=isolation)
        )
    plan_simulation(settings.spec)  # validates every schedule against the traffic before anything runs
    return settings


class _ProgressLine:
    """The live progress line on stderr (only on a terminal): rewritten in place, at most 5 times a second."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._last = 0.0
        self.shown = False

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self._last < 0.2:
            return
        self._last = now
        self.shown = True
        self._stream.write(
            f"\r  {progress.phase}: {progress.at_s:,.0f}/{progress.duration_s:,.0f} s simulated, "
            f"{progress.accepted:,} events, {progress.anomalies} anomalies, monitoring {progress.monitoring}   "
        )
        self._stream.flush()

    def clear(self) -> None:
        if self.shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


def run(args: argparse.Namespace) -> int:
    """Run ``agentwatch simulate`` as parsed from the command line; return the exit code."""
    try:
        settings = settings_from_args(args)
    except (FaultSpecError, ValueError, TypeError) as exc:
        print(f"agentwatch simulate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    backend: str = args.backend
    options: dict[str, Any] = {}
    if settings.clock == "virtual":
        backend, options = virtual_time_backend(backend)
    elif backend == "trio":
        try:
            import trio  # noqa: F401  # only to fail early, with a usage error, when it is missing
        except ImportError:
            print("agentwatch simulate: error: --backend trio needs trio installed", file=sys.stderr)
            return EXIT_USAGE
    report_file: IO[bytes] | None = None
    if args.report is not None:
        try:
            report_file = open(args.report, "wb")  # noqa: SIM115  # closed below, after the run
        except OSError as exc:
            print(f"agentwatch simulate: error: --report {args.report}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
    progress = _ProgressLine(sys.stderr) if sys.stderr.isatty() else None

    async def main(backend_name: str) -> tuple[SimulationReport, RunFacts]:
        interrupt = anyio.Event()
        async with anyio.create_task_group() as tasks:
            await tasks.start(_watch_sigint, interrupt)
            spec = settings.spec
            print(
                f"agentwatch simulate: {spec.duration:g} s of traffic on {spec.threads} threads, {spec.clients} "
                f"client{'' if spec.clients == 1 else 's'}, seed {spec.seed}, {settings.clock} clock ({backend_name})"
                + ("; first without faults, as the baseline" if settings.baseline else "")
                + "; "
                "Ctrl-C stops it and writes a partial report",
                file=sys.stderr,
                flush=True,
            )
            outcome = await simulate_with_facts(settings, on_progress=progress, interrupt=interrupt)
            tasks.cancel_scope.cancel()
        return outcome

    runs: list[tuple[str, str, dict[str, Any]]] = [(args.backend, backend, options)]
    if settings.checks.compare_backends:
        # Figure 10: the same settings on both event loops, one after the other, then compared.
        runs = [(name, *virtual_time_backend(name)) for name in BOTH_BACKENDS]
    try:
        try:
            facts = []
            for backend_name, backend, options in runs:
                facts.append(anyio.run(main, backend_name, backend=backend, backend_options=options)[1])
                if facts[-1].report.interrupted:
                    break
            report = (
                facts[0].report
                if len(facts) < len(runs)
                else (combine_backends(facts[0], facts[1]) if len(facts) == 2 else facts[0].report)
            )
        except KeyboardInterrupt:
            # A second Ctrl-C, or one before the handler was installed: nothing is left to report on.
            if progress is not None:
                progress.clear()
            print("agentwatch simulate: interrupted before a report could be made", file=sys.stderr)
            return EXIT_INTERRUPTED
        if progress is not None:
            progress.clear()
        encoded = msgspec.json.encode(report)
        if report_file is not None:
            report_file.write(encoded + b"\n")
        if args.json:
            sys.stdout.write(encoded.decode() + "\n")
        else:
            color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
            sys.stdout.write(render_summary(report, color=color) + "\n")
    finally:
        if report_file is not None:
            report_file.close()
    if report.interrupted:
        print("agentwatch simulate: interrupted; the report is partial", file=sys.stderr)
        return EXIT_INTERRUPTED
    failed = failed_criteria(report.criteria)
    for criterion in failed:
        print(f"agentwatch simulate: FAILED {criterion.name}: {criterion.detail}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


async def _watch_sigint(
    interrupt: anyio.Event, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    # The first Ctrl-C stops the traffic and lets the partial report be written; the receiver closes after it,
    # so a second Ctrl-C interrupts for real.
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        task_status.started()
        async for _ in signals:
            interrupt.set()
            return


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``simulate`` on its own (``python -m supervisors.simulate ...``), until the CLI registers it."""
    parser = argparse.ArgumentParser(prog="agentwatch")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_parser(commands)
    try:
        args = parser.parse_args(["simulate", *(sys.argv[1:] if argv is None else argv)])
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    status: int = args.handler(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
