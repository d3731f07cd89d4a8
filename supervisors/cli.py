from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from typing import IO, TYPE_CHECKING, Final

import msgspec

from actors.chat._detection import DetectionThresholds
from supervisors._config import ConfigError, load_config, thresholds_with
from supervisors._replay import InvalidTraceLine, JsonReportWriter, TableReportWriter, TraceReplay

# By function, not by module attribute: the package re-exports a function named `simulate`, which shadows the
# submodule's name on the package object.
from supervisors.serve import add_parser as add_serve_parser
from supervisors.simulate import add_parser as add_simulate_parser

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

PROG: Final = "agentwatch"

#: Exit codes shared by every subcommand.
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

# Bad lines reported one by one on stderr before the rest are only counted: a corrupt gigabyte must not bury the
# report under millions of identical messages.
_MAX_REPORTED_LINES: Final = 100


def _usage_error(command: str, message: str) -> int:
    print(f"{PROG} {command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _seconds(text: str) -> float:
    """argparse type of a threshold flag: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive finite number of seconds, got {text!r}")
    return value


# ---------------------------------------------------------------------- replay

_THRESHOLD_FLAGS: Final = ("stuck_tool_after", "stale_thread_after", "high_latency_after")


def _register_replay(commands: _Subparsers) -> None:
    parser = commands.add_parser(
        "replay",
        help="run a recorded trace through the monitor's detection core and report every anomaly",
        description="Run a recorded JSON Lines trace through the monitor's detection core on a virtual clock "
        "driven by the trace's own times, and report every anomaly. Format and clock rules: docs/replay.md.",
        epilog="exit status: 0 the replay completed (anomalies found are not a failure unless --fail-on-anomaly), "
        "1 --strict met a bad line or --fail-on-anomaly found one, 2 usage error, 130 interrupted",
    )
    parser.add_argument("trace", metavar="FILE", help="the trace, one event or envelope per line; - reads stdin")
    parser.add_argument("--json", action="store_true", help="print one JSON object (schema: docs/replay.md)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad line (exit 1)")
    parser.add_argument(
        "--no-drain",
        dest="drain",
        action="store_false",
        help="do not advance the clock past the thresholds at the end (report only what the trace's span shows)",
    )
    parser.add_argument("--fail-on-anomaly", action="store_true", help="exit 1 when any anomaly is reported")
    defaults = {field.name: field.default for field in msgspec.structs.fields(DetectionThresholds)}
    for name in _THRESHOLD_FLAGS:
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=_seconds,
            metavar="S",
            help=f"seconds (default {defaults[name]:g}, or the value in --config)",
        )
    parser.add_argument(
        "--config",
        metavar="FILE.toml",
        help="the runtime config file (as for serve); its [monitor.thresholds] apply, flags take precedence",
    )
    parser.set_defaults(handler=_replay)


def _thresholds(args: argparse.Namespace) -> DetectionThresholds:
    # The runtime's own config file, so the file `serve --config` runs with replays with the same thresholds.
    base = load_config(args.config).monitor.thresholds if args.config is not None else DetectionThresholds()
    return thresholds_with(base, **{name: getattr(args, name) for name in _THRESHOLD_FLAGS})


def _replay(args: argparse.Namespace) -> int:
    try:
        thresholds = _thresholds(args)
    except ConfigError as error:
        return _usage_error("replay", f"--config: {error}")
    replay = TraceReplay(thresholds)
    stopped: str | None = None
    status = EXIT_OK
    anomalies = reported = 0
    with contextlib.ExitStack() as stack:
        stream: IO[bytes]
        if args.trace == "-":
            stream = sys.stdin.buffer
        else:
            try:
                stream = stack.enter_context(open(args.trace, "rb"))
            except FileNotFoundError:
                return _usage_error("replay", f"{args.trace}: no such file")
            except OSError as exc:
                return _usage_error("replay", f"{args.trace}: cannot be read: {exc.strerror or exc}")
        # Created only once the input is open, so a usage error leaves stdout empty.
        writer = JsonReportWriter(sys.stdout) if args.json else TableReportWriter(sys.stdout)
        try:
            for item in replay.run(stream, drain=args.drain):
                if isinstance(item, InvalidTraceLine):
                    if args.strict:
                        print(f"{PROG} replay: {item} (--strict: stopping)", file=sys.stderr)
                        stopped, status = f"--strict: {item}", EXIT_FAILED
                        break
                    reported += 1
                    if reported <= _MAX_REPORTED_LINES:
                        print(item, file=sys.stderr)
                    continue
                anomalies += 1
                writer.anomaly(item, replay.origin or 0)
        except KeyboardInterrupt:
            stopped, status = "interrupted", EXIT_INTERRUPTED
        except BrokenPipeError:
            raise  # stdout is gone, not the input: main() ends quietly
        except OSError as exc:
            print(f"{PROG} replay: error reading {args.trace}: {exc.strerror or exc}", file=sys.stderr)
            stopped, status = f"read error: {exc.strerror or exc}", EXIT_FAILED
    stats = replay.statistics()
    if stats.invalid > _MAX_REPORTED_LINES and not args.strict:
        print(f"... {stats.invalid - _MAX_REPORTED_LINES} more invalid lines not shown", file=sys.stderr)
    writer.close(stats, drained=args.drain and stopped is None, stopped=stopped)
    if status == EXIT_OK and args.fail_on_anomaly and anomalies:
        status = EXIT_FAILED
    return status


# ---------------------------------------------------------------------- dispatch

#: Every subcommand: a function that adds its parser to the subparsers and sets ``handler`` (args -> exit code).
#: Adding one is that function and one entry here.
SUBCOMMANDS: Final[Sequence[Callable[[_Subparsers], None]]] = (
    _register_replay,
    add_serve_parser,
    add_simulate_parser,
)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``agentwatch`` argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog=PROG, description="Actor-based supervisor runtime for agent chat.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in SUBCOMMANDS:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agentwatch`` command.

    :param argv: the arguments after the program name; None reads ``sys.argv``.
    :return: the exit code (0 success, 1 failure, 2 usage error, 130 interrupted).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        # argparse exits on --help (0) and on usage errors (2); a return value keeps main() callable in-process.
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        status: int = args.handler(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep the interpreter's final flush from raising too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    return status


if __name__ == "__main__":
    sys.exit(main())
