from __future__ import annotations

import io
import random
import time
from typing import Any

import msgspec
from _common import emit, interleaved, median, parse_args, progress

from supervisors._replay import InvalidTraceLine, TraceReplay

GOAL = 200_000.0
#: Runs in flight at once: their events interleave in the trace, as they would from a busy backend.
CONCURRENT_RUNS = 64
#: Share of lines written as envelopes (``{"observedAt": ..., "event": ...}``) rather than bare events.
ENVELOPE_SHARE = 0.25
_encode = msgspec.json.encode


def _run_events(rng: random.Random, thread: str, run: str) -> list[dict[str, Any]]:
    """The events of one realistic run: reasoning, 0-3 tool calls with streamed arguments, a streamed answer."""
    ids = {"threadId": thread, "runId": run}
    events: list[dict[str, Any]] = [{"type": "RUN_STARTED", "threadId": thread, "runId": run}]
    thinking = f"{run}:thinking"
    events.append({"type": "REASONING_START", "messageId": thinking, "metadata": ids})
    events.append({"type": "REASONING_MESSAGE_START", "messageId": thinking, "role": "reasoning", "metadata": ids})
    events += [
        {"type": "REASONING_MESSAGE_CONTENT", "messageId": thinking, "delta": "considering the question " * 2}
        | {"metadata": ids}
        for _ in range(rng.randint(1, 4))
    ]
    events.append({"type": "REASONING_MESSAGE_END", "messageId": thinking, "metadata": ids})
    events.append({"type": "REASONING_END", "messageId": thinking, "metadata": ids})
    for call in range(rng.randint(0, 3)):
        call_id = f"{run}:call-{call}"
        events.append({"type": "TOOL_CALL_START", "toolCallId": call_id, "toolCallName": "search", "metadata": ids})
        events += [
            {"type": "TOOL_CALL_ARGS", "toolCallId": call_id, "delta": '{"query": "invoices"', "metadata": ids}
            for _ in range(rng.randint(1, 3))
        ]
        events.append({"type": "TOOL_CALL_END", "toolCallId": call_id, "metadata": ids})
        events.append(
            {
                "type": "TOOL_CALL_RESULT",
                "messageId": f"{call_id}:result",
                "toolCallId": call_id,
                "content": "3 invoices found",
                "metadata": ids,
            }
        )
    answer = f"{run}:answer"
    events.append({"type": "TEXT_MESSAGE_START", "messageId": answer, "role": "assistant", "metadata": ids})
    events += [
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": answer, "delta": "Here is what I found. ", "metadata": ids}
        for _ in range(rng.randint(3, 12))
    ]
    events.append({"type": "TEXT_MESSAGE_END", "messageId": answer, "metadata": ids})
    events.append({"type": "RUN_FINISHED", "threadId": thread, "runId": run})
    return events


def generate_trace(events: int, seed: int = 0) -> bytes:
    """A clean trace of about ``events`` lines: interleaved runs, ~20 ms apart, a quarter of them in envelopes."""
    rng = random.Random(seed)
    lines: list[bytes] = []
    now = 1_714_000_000_000
    runs = 0
    active: list[list[dict[str, Any]]] = []
    while len(lines) < events or active:
        while len(active) < CONCURRENT_RUNS and len(lines) < events:
            runs += 1
            active.append(_run_events(rng, f"thread-{runs % 5000}", f"run-{runs}")[::-1])
        pending = active[rng.randrange(len(active))]
        event = pending.pop()
        if not pending:
            active.remove(pending)
        now += rng.randint(0, 40)
        if rng.random() < ENVELOPE_SHARE:
            # Created a little before the bridge saw it; observedAt keeps the trace in time order.
            event["timestamp"] = now - rng.randint(0, 50)
            lines.append(_encode({"observedAt": now, "event": event}))
        else:
            event["timestamp"] = now
            lines.append(_encode(event))
    return b"\n".join(lines) + b"\n"


# CPU time of this process, not wall time: both loops are synchronous and single-threaded, so CPU time is what
# they cost, and it does not halve when other work shares the machine (wall time did, for figure and floor alike).
_clock = time.process_time


def replay_throughput(trace: bytes, events: int) -> float:
    """Replay the trace from an in-memory stream, as the CLI does from a file; return events per CPU second."""
    replay = TraceReplay()
    stream = io.BytesIO(trace)
    start = _clock()
    for item in replay.run(stream):
        if isinstance(item, InvalidTraceLine):
            raise AssertionError(f"the generated trace has a bad line: {item}")
    elapsed = _clock() - start
    stats = replay.statistics()
    assert stats.events == events, stats
    return events / elapsed


def decode_floor(trace: bytes, events: int) -> float:
    """The floor: read the same lines the same way and decode each into a generic object; events per CPU second."""
    decode = msgspec.json.decode
    stream = io.BytesIO(trace)
    readline = stream.readline
    start = _clock()
    count = 0
    while line := readline():
        decode(line)
        count += 1
    elapsed = _clock() - start
    assert count == events
    return events / elapsed


def main() -> None:
    args = parse_args("Replay throughput: trace lines through parse_event, stamping and the RunTracker.")
    events = 100_000 if args.quick else 400_000
    trace = generate_trace(events)
    lines = trace.count(b"\n")
    progress(f"generated {lines} lines ({len(trace) / 1e6:.1f} MB)")
    samples = interleaved(
        args.runs,
        {
            "replay": lambda: replay_throughput(trace, lines),
            "decode": lambda: decode_floor(trace, lines),
        },
    )
    value = median(samples["replay"])
    floor = median(samples["decode"])
    figure = {
        "name": "replay throughput",
        "backend": "none",
        "value": round(value),
        "unit": "events/s",
        "floor": round(floor),
        "ratio": round(value / floor, 3),
        "goal": f">= {GOAL:.0f} events/s",
        "met": value >= GOAL,
        "run_ratios": [round(v / f, 3) for v, f in zip(samples["replay"], samples["decode"], strict=True)],
        "samples": [round(v) for v in samples["replay"]],
        "floor_samples": [round(f) for f in samples["decode"]],
    }
    emit(
        "replay",
        [figure],
        runs=args.runs,
        quick=args.quick,
        lines=lines,
        trace_bytes=len(trace),
        clock="process_time",
    )


if __name__ == "__main__":
    main()
