from __future__ import annotations

import datetime
import re
from collections import OrderedDict
from typing import IO, TYPE_CHECKING, Annotated, Any, Final

import msgspec

from actors.chat._anomaly import Anomaly, AnomalyKind, Severity
from actors.chat._detection import DetectionThresholds, RunTracker
from actors.chat._events import (
    DEFAULT_MAX_BYTES,
    AgentEvent,
    InvalidEvent,
    RunFinished,
    RunStarted,
    StampedEvent,
    _invalid_event_from,
    decode_event,
    event_run_ids,
    parse_event,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

REPORT_VERSION: Final = 1
"""Version of the ``--json`` report schema; bumped only when a key changes meaning or goes away."""

_MAX_SAFE_INT: Final = 9007199254740991
_NOTHING: Final[tuple[Anomaly, ...]] = ()
_BOM: Final = b"\xef\xbb\xbf"
# Remembered run ids per thread when counting distinct runs: runs of a thread follow one another, so a few recent
# ids tell a new run from an interleaved or duplicated one without keeping every id ever seen.
_RECENT_RUNS: Final = 8
# How often (in lines) idle thread cursors are swept; sweeping costs one peek when nothing is idle.
_SWEEP_EVERY: Final = 4096


class _Envelope(msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True):
    # Unknown keys are rejected: a misspelt `observed_at` silently ignored would make every latency zero.
    event: msgspec.Raw
    observed_at: Annotated[int, msgspec.Meta(ge=0, le=_MAX_SAFE_INT)] | None = None
    thread_id: str | None = None
    run_id: str | None = None


_envelope_decoder: Final = msgspec.json.Decoder(_Envelope)
_ENVELOPE_FIELDS: Final = ", ".join(field.encode_name for field in msgspec.structs.fields(_Envelope))
_UNKNOWN_FIELD: Final = re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`$")
_JSON_TYPES: Final[dict[type, str]] = {dict: "object", list: "array", bool: "bool", int: "int", float: "float"}


class InvalidTraceLine(ValueError):
    """A trace line that cannot be replayed; ``str()`` reads ``line 7: $.event.toolCallId: expected str, got int``.

    :param line: 1-based line number in the trace (blank lines count).
    :param error: what is wrong with the line, naming the field at fault.
    """

    def __init__(self, line: int, error: InvalidEvent) -> None:
        self.line = line
        self.error = error
        super().__init__(f"line {line}: {error}")

    def __reduce__(self) -> tuple[type[InvalidTraceLine], tuple[int, InvalidEvent]]:
        return (type(self), (self.line, self.error))


class ReplayStats(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """What a replay read.

    :param lines: lines read, blank ones included (``lines - events - invalid`` were blank).
    :param events: lines replayed as events.
    :param invalid: lines rejected (reported on stderr, skipped).
    :param runs: distinct (thread, run) pairs seen, counted in bounded memory (see ``docs/replay.md``).
    :param out_of_order: events whose own time was earlier than the replay clock (observed at the clock).
    """

    lines: int
    events: int
    invalid: int
    runs: int
    out_of_order: int


class AnomalyRecord(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One anomaly as the replay report writes it (``toolCallId`` is null unless it concerns one tool call)."""

    kind: AnomalyKind
    severity: Severity
    thread_id: str
    run_id: str | None
    tool_call_id: str | None
    detected_at: int
    detail: str

    @classmethod
    def from_anomaly(cls, anomaly: Anomaly) -> AnomalyRecord:
        """Keep the fields of ``anomaly`` that the report schema carries."""
        return cls(
            kind=anomaly.kind,
            severity=anomaly.severity,
            thread_id=anomaly.thread_id,
            run_id=anomaly.run_id,
            tool_call_id=anomaly.tool_call_id,
            detected_at=anomaly.detected_at,
            detail=anomaly.detail,
        )


class ReplayReport(msgspec.Struct, frozen=True, kw_only=True):
    """The ``--json`` report: every anomaly in detection order and what was read.

    :param stopped: why the replay stopped before the end of its input (``--strict``, interrupted); absent when
        it completed.
    """

    version: int
    anomalies: list[AnomalyRecord]
    stats: ReplayStats
    stopped: str | None = msgspec.field(default=None)


class _ThreadCursor:
    """What the replay remembers of one thread: the bridge's seq counter and the runs seen lately."""

    __slots__ = ("last_run", "last_seen", "recent_runs", "seq")

    def __init__(self, run_id: str, now: int) -> None:
        self.seq = 0
        self.last_run = run_id
        self.last_seen = now
        self.recent_runs: dict[str, None] | None = None


class TraceReplay:
    """Replay a recorded trace through the monitor's detection core on a virtual clock driven by the trace.

    Feed it the trace's lines in order (:meth:`feed`, or :meth:`run` over a binary stream) and call
    :meth:`finish` at the end. Each line is an AG-UI event (seed aliases accepted) or an envelope
    ``{"observedAt": ms, "event": {...}, "threadId": ..., "runId": ...}``. The clock:

    - a line's time is the envelope's ``observedAt``, else the event's ``timestamp``; a line with neither is
      observed at the current clock (which starts at 0);
    - before a line is observed, every deadline that fell due up to its time fires *at its due time*, so
      ``detectedAt`` is when a live monitor would have reported it, not when the next line happened to arrive;
    - the clock never goes back: a line earlier than the clock is observed at the clock and counted in
      ``out_of_order``; its event's lag (``observedAt - timestamp``, for ``high_latency``) is its own.

    Per-thread ``seq`` numbers are assigned here, as the bridge would. Memory is bounded by the tracker's
    ``max_tracked_runs`` and ``retention``, whatever the length of the trace.

    :param thresholds: the detection thresholds.
    :param max_line_bytes: longer lines are rejected without being parsed.
    :raises ValueError: when ``max_line_bytes`` is below 1.
    """

    def __init__(
        self, thresholds: DetectionThresholds | None = None, *, max_line_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if isinstance(max_line_bytes, bool) or not isinstance(max_line_bytes, int) or max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be a positive int, got {max_line_bytes!r}")
        self._tracker = RunTracker(thresholds)
        thresholds = self._tracker.thresholds
        self._max_line_bytes = max_line_bytes
        self._drain_ms = round(max(thresholds.stuck_tool_after, thresholds.stale_thread_after) * 1000)
        # A thread idle this long has had every run forgotten by the tracker too, so its cursor may go.
        self._idle_ms = round((thresholds.stale_thread_after + thresholds.retention) * 1000)
        self._max_threads = thresholds.max_tracked_runs
        self._threads: OrderedDict[str, _ThreadCursor] = OrderedDict()
        self._clock = 0
        self._origin: int | None = None
        self._lines = 0
        self._events = 0
        self._invalid = 0
        self._runs = 0
        self._out_of_order = 0
        self._finished = False

    @property
    def thresholds(self) -> DetectionThresholds:
        """The thresholds the replay detects with."""
        return self._tracker.thresholds

    @property
    def clock(self) -> int:
        """The replay clock (ms): the latest line time seen, or the drain horizon after :meth:`finish`."""
        return self._clock

    @property
    def origin(self) -> int | None:
        """The time of the first timed line (ms), or None while no line carried a time."""
        return self._origin

    def statistics(self) -> ReplayStats:
        """Return what the replay has read so far."""
        return ReplayStats(
            lines=self._lines,
            events=self._events,
            invalid=self._invalid,
            runs=self._runs,
            out_of_order=self._out_of_order,
        )

    # ------------------------------------------------------------------ input

    def run(self, stream: IO[bytes], *, drain: bool = True) -> Iterator[Anomaly | InvalidTraceLine]:
        """Replay every line of ``stream``, then :meth:`finish`; yield anomalies and bad lines as they come.

        Reads one line at a time (at most ``max_line_bytes`` of it held in memory), so input of any size streams.

        :param stream: a binary stream of JSON Lines (a file, ``sys.stdin.buffer``).
        :param drain: see :meth:`finish`.
        :return: an iterator over every anomaly, in detection order, and every rejected line, where it occurs.
        """
        # Room for the longest acceptable line, its CR LF, and one byte to tell that it is longer.
        limit = self._max_line_bytes + 3
        readline = stream.readline
        feed = self.feed
        while line := readline(limit):
            if len(line) == limit and not line.endswith(b"\n"):
                yield self._reject_oversize(line, stream, limit)
                continue
            try:
                found = feed(line)
            except InvalidTraceLine as invalid:
                yield invalid
                continue
            yield from found
        yield from self.finish(drain=drain)

    def _reject_oversize(self, head: bytes, stream: IO[bytes], limit: int) -> InvalidTraceLine:
        # Skip the rest of the line chunk by chunk: a gigabyte without a newline must not be held in memory.
        size = len(head)
        while True:
            chunk = stream.readline(limit)
            size += len(chunk)
            if not chunk or chunk.endswith(b"\n"):
                break
        self._lines += 1
        self._invalid += 1
        size -= 1 if chunk.endswith(b"\n") else 0
        return InvalidTraceLine(
            self._lines, InvalidEvent(None, f"line is {size} bytes, over the {self._max_line_bytes}-byte limit")
        )

    def feed(self, line: bytes) -> tuple[Anomaly, ...]:
        """Replay one line of the trace (its line break may be included; a blank line is counted and skipped).

        :return: the anomalies detected up to and at this line's time, in detection order.
        :raises InvalidTraceLine: when the line is not a valid event or envelope, or does not say which thread
            and run it belongs to; the line is counted in ``invalid`` and leaves no trace in the detection state.
        :raises RuntimeError: after :meth:`finish`.
        """
        if self._finished:
            raise RuntimeError("feed() after finish(): the replay is over")
        self._lines += 1
        body = line.strip()
        if not body:
            return _NOTHING
        if self._lines == 1 and body.startswith(_BOM):
            body = body[len(_BOM) :].lstrip()
        try:
            event, frame, observed, thread_id, run_id = self._decode(body)
        except InvalidEvent as error:
            self._invalid += 1
            raise InvalidTraceLine(self._lines, error) from None
        self._events += 1
        clock = self._clock
        if observed is None:
            observed = clock
        elif observed < clock:
            self._out_of_order += 1
            timestamp = event.timestamp
            if timestamp is not None:
                # The tracker measures lag as observed_at - timestamp; shift the timestamp with the clamped
                # observation so the line keeps its own lag and is neither flagged nor excused for being late.
                event = msgspec.structs.replace(event, timestamp=timestamp + clock - observed)
            observed = clock
        else:
            if self._origin is None:
                self._origin = observed
            self._clock = observed

        tracker = self._tracker
        found: list[Anomaly] | None = None
        due = tracker.next_deadline()
        if due is not None and due <= observed:
            found = []
            self._advance_to(observed, due, found)

        cursor = self._cursor(thread_id, run_id, observed)
        cursor.seq += 1
        # Not stamp(): the tracker reads neither the stamped metadata nor the frame, and these StampedEvents never
        # leave the replay, so the line's own JSON stands in for the frame. That saves a struct copy and an encode
        # per event, a third of the replay's time.
        revealed = tracker.observe(
            StampedEvent(
                thread_id=thread_id, run_id=run_id, seq=cursor.seq, observed_at=observed, event=event, frame=frame
            )
        )
        if self._events % _SWEEP_EVERY == 0:
            self._sweep_threads()
        if found is None:
            return revealed
        found += revealed
        return tuple(found)

    def finish(self, *, drain: bool = True) -> tuple[Anomaly, ...]:
        """End the replay.

        :param drain: advance the clock past the largest deadline threshold (``stuck_tool_after``,
            ``stale_thread_after``) so every tool call still open and every run still unfinished is reported, at
            its due time. Without it, only what the trace's own time span revealed is reported.
        :return: the anomalies the drain revealed.
        :raises RuntimeError: when called twice.
        """
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        if not drain:
            return _NOTHING
        horizon = self._clock + self._drain_ms
        found: list[Anomaly] = []
        due = self._tracker.next_deadline()
        if due is not None and due <= horizon:
            self._advance_to(horizon, due, found)
        self._clock = horizon
        return tuple(found)

    # ------------------------------------------------------------------ internals

    def _advance_to(self, now: int, due: int, found: list[Anomaly]) -> None:
        # One advance per due time, so each anomaly is detected when it fell due; next_deadline() may be early
        # (a run active since is re-armed when popped), which only costs an extra empty advance.
        tracker = self._tracker
        next_due: int | None = due
        while next_due is not None and next_due <= now:
            found += tracker.advance(next_due)
            fired, next_due = next_due, tracker.next_deadline()
            if next_due is not None and next_due <= fired:
                # advance(t) fires everything due at or before t; anything else would loop here forever.
                raise RuntimeError(f"RunTracker.advance({fired}) left a deadline at {next_due} pending")

    def _cursor(self, thread_id: str, run_id: str, now: int) -> _ThreadCursor:
        threads = self._threads
        cursor = threads.get(thread_id)
        if cursor is None:
            cursor = threads[thread_id] = _ThreadCursor(run_id, now)
            self._runs += 1
            if len(threads) > self._max_threads:
                threads.popitem(last=False)
            return cursor
        threads.move_to_end(thread_id)
        cursor.last_seen = now
        if run_id != cursor.last_run:
            recent = cursor.recent_runs
            if recent is None:
                recent = cursor.recent_runs = {cursor.last_run: None}
            if run_id not in recent:
                self._runs += 1
                recent[run_id] = None
                if len(recent) > _RECENT_RUNS:
                    del recent[next(iter(recent))]
            cursor.last_run = run_id
        return cursor

    def _sweep_threads(self) -> None:
        threads = self._threads
        idle_before = self._clock - self._idle_ms
        while threads:
            oldest = next(iter(threads.values()))
            if oldest.last_seen >= idle_before:
                break
            threads.popitem(last=False)

    def _decode(self, body: bytes) -> tuple[AgentEvent, bytes, int | None, str, str]:
        """Decode one non-blank line into (event, its JSON, its time or None, thread id, run id)."""
        if len(body) > self._max_line_bytes:
            raise InvalidEvent(None, f"line is {len(body)} bytes, over the {self._max_line_bytes}-byte limit")
        envelope: _Envelope | None = None
        if b'"event"' in body:
            envelope = _decode_envelope(body)
        if envelope is None:
            event = _parse_bare(body)
            thread_id, run_id = event_run_ids(event)
            if thread_id is None:
                raise _missing_id(event, "threadId", in_envelope=False)
            if run_id is None:
                raise _missing_id(event, "runId", in_envelope=False)
            return event, body, event.timestamp, thread_id, run_id
        frame = bytes(envelope.event)
        try:
            event = _parse(frame)
        except InvalidEvent as error:
            raise InvalidEvent(_under_event(error.field), error.rule) from None
        observed = envelope.observed_at if envelope.observed_at is not None else event.timestamp
        own_thread, own_run = event_run_ids(event)
        thread_id = _reconcile("threadId", envelope.thread_id, own_thread, event)
        run_id = _reconcile("runId", envelope.run_id, own_run, event)
        return event, frame, observed, thread_id, run_id


def _parse(data: bytes) -> AgentEvent:
    """parse_event(), with the common case of a valid AG-UI event decoded without its checks and wrapping."""
    try:
        return decode_event(data)
    except (msgspec.MsgspecError, RecursionError, UnicodeDecodeError):
        # parse_event() reads the same bytes again: it resolves a seed alias, or names the field at fault.
        return parse_event(data)


def _decode_envelope(body: bytes) -> _Envelope | None:
    """Decode an envelope; None when ``body`` is an event after all (an object with a top-level ``type``)."""
    try:
        return _envelope_decoder.decode(body)
    except msgspec.ValidationError as exc:
        unknown = _UNKNOWN_FIELD.match(str(exc))
        if unknown is None:
            envelope_error = _invalid_event_from(exc)
        else:
            envelope_error = InvalidEvent(f"$.{unknown['name']}", f"unknown envelope field (known: {_ENVELOPE_FIELDS})")
    except msgspec.DecodeError as exc:
        raise InvalidEvent(None, f"malformed JSON: {exc}") from None
    # Cold path: an event that happens to contain the key "event" somewhere, or a broken envelope.
    try:
        obj = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        raise envelope_error from None
    if isinstance(obj, dict) and "type" in obj:
        return None
    raise envelope_error


def _parse_bare(body: bytes) -> AgentEvent:
    try:
        return _parse(body)
    except InvalidEvent as error:
        if error.field == "$.type" and error.rule == "missing required field" and b'"observedAt"' in body:
            # An object with observedAt and no type was meant as an envelope: say what the envelope lacks.
            _decode_envelope(body)
        raise


def _under_event(field: str | None) -> str:
    # The envelope decoded, so its event is JSON: a field of None (whole frame) means the event as a whole.
    return "$.event" if field is None else "$.event" + field[1:]


def _reconcile(name: str, given: str | None, own: str | None, event: AgentEvent) -> str:
    if given is None:
        if own is None:
            raise _missing_id(event, name, in_envelope=True)
        return own
    if own is not None and own != given:
        where = f"$.event.{name}" if isinstance(event, RunStarted | RunFinished) else f"$.event.metadata.{name}"
        raise InvalidEvent(f"$.{name}", f"{given!r} in the envelope but {own!r} at {where}")
    return given


def _missing_id(event: AgentEvent, name: str, *, in_envelope: bool) -> InvalidEvent:
    type_name = str(event.__struct_config__.tag)
    prefix = "$.event" if in_envelope else "$"
    field = f"{prefix}.metadata.{name}"
    metadata: Any = event.metadata
    value = metadata.get(name) if metadata is not None else None
    if value is not None:
        return InvalidEvent(field, f"expected str, got {_JSON_TYPES.get(type(value), type(value).__name__)}")
    noun = "thread" if name == "threadId" else "run"
    if in_envelope:
        return InvalidEvent(
            f"$.{name}", f"missing: the {type_name} event names no {noun}; give {name} in the envelope or at {field}"
        )
    return InvalidEvent(
        field, f"missing: a {type_name} event names no {noun} itself; set it here or wrap the line in an envelope"
    )


# ---------------------------------------------------------------------- report writers


class JsonReportWriter:
    """Write a :class:`ReplayReport` as JSON while the replay runs: one anomaly per line, constant memory.

    The text written decodes to the report that :func:`msgspec.json.encode` would give for the same anomalies.

    :param out: where to write.
    """

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._count = 0
        out.write(f'{{"version":{REPORT_VERSION},"anomalies":[')

    def anomaly(self, anomaly: Anomaly, origin: int) -> None:
        """Write one anomaly (``origin`` is unused: JSON times are absolute ms on the replay clock)."""
        self._out.write(
            ("\n" if self._count == 0 else ",\n") + _encoder.encode(AnomalyRecord.from_anomaly(anomaly)).decode()
        )
        self._count += 1

    def close(self, stats: ReplayStats, *, drained: bool, stopped: str | None = None) -> None:
        """End the report with the statistics (and why the replay stopped early, if it did)."""
        tail = "\n]" if self._count else "]"
        tail += ',"stats":' + _encoder.encode(stats).decode()
        if stopped is not None:
            tail += ',"stopped":' + _encoder.encode(stopped).decode()
        self._out.write(tail + "}\n")


_encoder: Final = msgspec.json.Encoder()
# Fixed widths so rows can be written as they are detected; a longer id shifts the rest of its row only.
_ROW: Final = "{:>10}  {:<22}  {:<8}  {:<12}  {:<12}  {:<12}  {}"
_EPOCH_MS_FROM: Final = 10**12  # 2001-09-09: smaller clocks are read as relative, not as dates
_HEADER: Final = _ROW.format("AT", "KIND", "SEVERITY", "THREAD", "RUN", "TOOL CALL", "DETAIL")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _instant(ms: int) -> str:
    # Traces recorded from a live system carry epoch ms; hand-made ones often count from 0, where a date is noise.
    if ms < _EPOCH_MS_FROM:
        return f"{ms} ms"
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return f"{ms} ms ({moment.isoformat(timespec='milliseconds').replace('+00:00', 'Z')})"


def _since(ms: int, origin: int) -> str:
    return f"{(ms - origin) / 1000:+.3f}s"


class TableReportWriter:
    """Write the replay report as a plain-text table, one row per anomaly as it is detected, then a summary.

    Times in the ``AT`` column are seconds since the first timed line (the origin, given in the summary).

    :param out: where to write.
    """

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._by_kind: dict[AnomalyKind, int] = {}
        self._origin: int | None = None

    def anomaly(self, anomaly: Anomaly, origin: int) -> None:
        """Write one row (the header first, before the first row)."""
        if not self._by_kind:
            self._out.write(_HEADER + "\n")
        self._origin = origin
        self._by_kind[anomaly.kind] = self._by_kind.get(anomaly.kind, 0) + 1
        row = _ROW.format(
            _since(anomaly.detected_at, origin),
            anomaly.kind,
            anomaly.severity,
            anomaly.thread_id,
            anomaly.run_id or "-",
            anomaly.tool_call_id or "-",
            anomaly.detail,
        )
        self._out.write(row + "\n")

    def close(self, stats: ReplayStats, *, drained: bool, stopped: str | None = None) -> None:
        """Write the summary: anomalies by kind, what was read, the clock's origin."""
        total = sum(self._by_kind.values())
        if total:
            kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(self._by_kind.items()))
            head = f"\n{total} {'anomaly' if total == 1 else 'anomalies'} ({kinds})"
        else:
            head = "No anomalies"
        blank = stats.lines - stats.events - stats.invalid
        lines = [
            f"{head} in {_count(stats.lines, 'line')}: {_count(stats.events, 'event')}, {stats.invalid} invalid, "
            f"{blank} blank, {stats.out_of_order} out of order; {_count(stats.runs, 'run')}."
        ]
        if self._origin is not None:
            lines.append(f"AT is the time since the first timed line, {_instant(self._origin)} on the replay clock.")
        if stopped is not None:
            lines.append(f"Stopped early: {stopped}.")
        elif not drained:
            lines.append("Not drained (--no-drain): deadlines after the last line were not checked.")
        self._out.write("\n".join(lines) + "\n")
