from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from actors import Message
from actors._mailbox import BATCH_SIZE, Mailbox, MailboxSpec
from actors.chat._events import (
    RunStarted,
    StampedEvent,
    TextMessageContent,
    ToolCallStart,
    decode_event,
    encode_event,
    stamp,
)
from actors.process import MessageSchema, _wire as wire
from actors.process._chat_monitor import MONITOR_SCHEMA, STAMPED_WIRE_FORM
from actors.process._outbox import RUN_LIMIT, WorkerOutbox
from actors.process._tell_runs import RunReader, WireForm, pack_run, packers
from tests.behaviour._process_kit import COUNTER_SCHEMA, Add, Greeted, Greeting, Total

ENCODER = msgspec.msgpack.Encoder()
STAMPED_CODE = MONITOR_SCHEMA.accepts.index(StampedEvent)
STAMPED_FIELDS = ("thread_id", "run_id", "seq", "observed_at", "fan_out", "frame")


def tapped() -> list[StampedEvent]:
    """Taps as the bridge makes them: metadata of the caller's kept beside the stamp, non-ASCII text, a fan-out."""
    return [
        stamp(RunStarted(thread_id="t1", run_id="r1"), thread_id="t1", run_id="r1", seq=1, observed_at=1_000),
        stamp(
            TextMessageContent(
                message_id="m1",
                delta="Grüße, 世界 — ça marche ✓ 🚀",
                metadata={"sentNs": 123, "trace": {"spans": [1, 2.5, None, "é"]}, "seq": "overwritten"},
            ),
            thread_id="t1",
            run_id="r1",
            seq=2,
            observed_at=1_001,
            fan_out=5,
        ),
        stamp(
            ToolCallStart(tool_call_id="c1", tool_call_name="søk"),
            thread_id="t2",
            run_id="r2",
            seq=1,
            observed_at=1_002,
            fan_out=1,
        ),
    ]


def run_body(packed: Any) -> bytes:
    """The body of a TellRun item as the worker receives it (the Raw inside its frame)."""
    frame = wire.frame([(wire.TELL_RUN, STAMPED_CODE, packed)], ENCODER)
    (item,) = wire.DOWN_BATCH.decode(frame[wire.LENGTH :])
    assert isinstance(item, wire.TellRun)
    return bytes(item.body)


def columns_of(events: list[StampedEvent]) -> list[list[Any]]:
    return [[getattr(event, name) for event in events] for name in STAMPED_FIELDS]


class TestStampedWireForm:
    def test_stamped_round_trip_through_compact_form_equal_to_original(self) -> None:
        events = tapped()
        packed = pack_run(packers(MONITOR_SCHEMA)[STAMPED_CODE], events)
        messages, errors = RunReader(MONITOR_SCHEMA).read(STAMPED_CODE, run_body(packed))
        assert errors == []
        assert messages == events
        content = messages[1]
        assert isinstance(content.event, TextMessageContent)
        assert content.event.delta == "Grüße, 世界 — ça marche ✓ 🚀"
        assert content.event.metadata == {
            "sentNs": 123,
            "trace": {"spans": [1, 2.5, None, "é"]},
            "seq": 2,
            "threadId": "t1",
            "runId": "r1",
        }
        assert [message.fan_out for message in messages] == [0, 5, 1]
        assert all(message.frame == encode_event(message.event) for message in messages)

    def test_stamped_compact_form_carries_stamp_and_frame_not_event_struct(self) -> None:
        events = tapped()
        packed = STAMPED_WIRE_FORM.pack(events)
        assert [list(column) for column in packed] == columns_of(events)
        # The frame crosses once: the compact run is smaller than the events encoded whole.
        assert len(ENCODER.encode(packed)) < len(ENCODER.encode(events)) * 0.7

    def test_stamped_run_with_frame_not_json_drops_that_event_only(self) -> None:
        events = tapped()
        columns = columns_of(events)
        columns[5][1] = b"{not json"
        messages, errors = RunReader(MONITOR_SCHEMA).read(STAMPED_CODE, run_body(columns))
        assert messages == [events[0], events[2]]
        assert len(errors) == 1
        assert "StampedEvent: DecodeError" in errors[0]

    def test_stamped_run_with_ill_typed_value_drops_that_event_only(self) -> None:
        events = tapped()
        columns = columns_of(events)
        columns[2][0] = "one"  # seq must be an int
        messages, errors = RunReader(MONITOR_SCHEMA).read(STAMPED_CODE, run_body(columns))
        assert messages == events[1:]
        assert len(errors) == 1
        assert "Expected `int`, got `str`" in errors[0]

    def test_stamped_run_columns_of_unequal_length_dropped_whole(self) -> None:
        columns = columns_of(tapped())
        columns[0].pop()
        messages, errors = RunReader(MONITOR_SCHEMA).read(STAMPED_CODE, run_body(columns))
        assert messages == []
        assert errors == ["a run of StampedEvent whose columns differ in length"]

    def test_stamped_run_of_wrong_shape_dropped_whole(self) -> None:
        messages, errors = RunReader(MONITOR_SCHEMA).read(STAMPED_CODE, run_body([1, 2, 3]))
        assert messages == []
        assert errors == ["a run of StampedEvent that is not 6 columns of equal length"]

    def test_stamped_frame_decodes_to_the_event_stamp_made(self) -> None:
        for event in tapped():
            assert decode_event(event.frame) == event.event


class TestRunsWithoutForm:
    def test_run_of_structs_round_trips_in_order(self) -> None:
        code = COUNTER_SCHEMA.accept_code(Add(value=0))
        assert code is not None
        assert packers(COUNTER_SCHEMA)[code] is None
        run = [Add(value=value) for value in range(5)]
        body = ENCODER.encode(pack_run(None, run))
        assert RunReader(COUNTER_SCHEMA).read(code, body) == (run, [])

    def test_run_with_malformed_message_drops_only_it(self) -> None:
        code = COUNTER_SCHEMA.accept_code(Greeting(text=""))
        assert code is not None
        body = ENCODER.encode([{"text": "a"}, {"text": 7}, {"text": "b"}])
        messages, errors = RunReader(COUNTER_SCHEMA).read(code, body)
        assert messages == [Greeting(text="a"), Greeting(text="b")]
        assert len(errors) == 1
        assert "Expected `str`, got `int`" in errors[0]

    def test_run_of_unknown_code_dropped_with_reason(self) -> None:
        assert RunReader(COUNTER_SCHEMA).read(99, ENCODER.encode([])) == ([], ["a run of unknown message code 99"])

    def test_run_body_not_a_list_dropped_with_reason(self) -> None:
        code = COUNTER_SCHEMA.accept_code(Add(value=0))
        assert code is not None
        messages, errors = RunReader(COUNTER_SCHEMA).read(code, ENCODER.encode({"value": 1}))
        assert messages == []
        assert errors[0].startswith("a run that is not a list")


class Point(Message, frozen=True, kw_only=True):
    x: int
    y: int
    label: str = ""


def point_from_wire(x: int, y: int) -> Point:
    return Point(x=x, y=y, label=f"{x},{y}")


class Asked(Message, frozen=True, kw_only=True):
    pass


class TestWireForm:
    def test_form_packs_named_fields_as_columns_in_given_order(self) -> None:
        form = WireForm(Point, ("y", "x"), point_from_wire)
        assert form.pack([Point(x=1, y=2), Point(x=3, y=4)]) == [(2, 4), (1, 3)]
        assert form.pack([]) == [(), ()]
        assert form.wire_type == tuple[list[int], list[int]]

    def test_form_single_field_rebuilt_from_its_column(self) -> None:
        form = WireForm(Point, ("x",), lambda x: Point(x=x, y=0))
        schema = MessageSchema(accepts=(Point,), wire_forms=(form,))
        body = ENCODER.encode(form.pack([Point(x=5, y=9), Point(x=6, y=9)]))
        assert RunReader(schema).read(0, body) == ([Point(x=5, y=0), Point(x=6, y=0)], [])

    @pytest.mark.parametrize(
        ("args", "error", "rule"),
        [
            ((dict, ("x",), point_from_wire), TypeError, "must be a msgspec Struct type"),
            ((Point, "x", point_from_wire), TypeError, "must be a sequence of field names"),
            ((Point, (), point_from_wire), ValueError, "must name at least one field"),
            ((Point, ("x", "x"), point_from_wire), ValueError, "must name each field once"),
            ((Point, ("x", "z"), point_from_wire), TypeError, "Point has no field z"),
            ((Point, ("x",), "not callable"), TypeError, "rebuild must be callable"),
        ],
    )
    def test_form_bad_arguments_rejected_with_rule(
        self, args: tuple[Any, ...], error: type[Exception], rule: str
    ) -> None:
        with pytest.raises(error, match=rule):
            WireForm(*args)

    def test_schema_form_for_type_not_accepted_rejected(self) -> None:
        with pytest.raises(ValueError, match="form for Point, which is not in accepts"):
            MessageSchema(accepts=(Asked,), wire_forms=(WireForm(Point, ("x", "y"), point_from_wire),))

    def test_schema_form_for_asked_type_rejected(self) -> None:
        with pytest.raises(ValueError, match="which is asked"):
            MessageSchema(
                accepts=(Point,), replies={Point: int}, wire_forms=(WireForm(Point, ("x", "y"), point_from_wire),)
            )

    def test_schema_two_forms_for_one_type_rejected(self) -> None:
        form = WireForm(Point, ("x", "y"), point_from_wire)
        with pytest.raises(ValueError, match="two forms for one type"):
            MessageSchema(accepts=(Point,), wire_forms=(form, WireForm(Point, ("x",), point_from_wire)))

    def test_schema_form_not_a_wire_form_rejected(self) -> None:
        with pytest.raises(TypeError, match="must hold WireForms"):
            MessageSchema(accepts=(Point,), wire_forms=({Point: "x"},))  # type: ignore[arg-type]


class Unschematic:
    """Not in the schema: stands for an AskRequest, a TimerFire or a control message in the host's mailbox."""


class Outbox:
    """A WorkerOutbox with the mailbox it takes tells from, and what it handed back as unencodable."""

    def __init__(self, schema: MessageSchema) -> None:
        self.schema = schema
        self.mailbox = Mailbox(MailboxSpec(capacity=100_000))
        self.dropped: list[Any] = []
        self.outbox = WorkerOutbox(schema, msgspec.msgpack.Encoder(), self._unencodable)

    def _unencodable(self, item: tuple[Any, ...], exc: Exception) -> None:
        self.dropped.append(item[2])

    def take_tells(self, code: int, message: Any) -> int:
        return self.outbox.take_tells(code, message, self.mailbox, self.schema.accept_codes, self.schema.replies)


def messages_in(entries: list[tuple[Any, ...]]) -> int:
    return sum(len(entry[2]) if entry[0] == wire.TELL_RUN else 1 for entry in entries)


class TestWorkerOutbox:
    def test_take_tells_random_streams_keep_order_counts_and_run_bounds(self) -> None:
        rng = random.Random(7)
        codes = COUNTER_SCHEMA.accept_codes
        for _trial in range(200):
            host = Outbox(COUNTER_SCHEMA)
            outbox, queue = host.outbox, host.mailbox.queue
            arrived: list[Any] = []
            frames: list[list[tuple[Any, ...]]] = []
            forwarded = 0
            for _step in range(rng.randint(1, 30)):
                for _ in range(rng.choice([1, 3, 50, 300, 900])):
                    kind = rng.choices(["add", "greet", "other", "ask"], weights=[60, 20, 2, 1])[0]
                    serial = len(arrived)
                    message: Any
                    if kind == "add":
                        message = Add(value=serial)
                    elif kind == "greet":
                        message = Greeting(text=str(serial))
                    else:
                        message = Unschematic() if kind == "other" else Total()
                    arrived.append(message)
                    queue.append(message)
                # The drain loop hands the host one message; the host takes the plain tells queued behind it.
                while queue:
                    message = queue.popleft()
                    host.mailbox.processed += 1
                    code = codes.get(type(message))
                    if code is None:
                        continue
                    if type(message) in COUNTER_SCHEMA.replies:
                        outbox.put((wire.ASK, code, message, 1))
                        forwarded += 1
                        continue
                    queued = len(queue)
                    taken = host.take_tells(code, message)
                    assert taken == 1 + queued - len(queue) <= 1 + BATCH_SIZE
                    forwarded += taken
                    assert outbox.size == messages_in(outbox.entries)
                    if rng.random() < 0.3:
                        frames.append(outbox.take_frame())
                        assert outbox.size == messages_in(outbox.entries)
            while outbox.entries:
                frames.append(outbox.take_frame())
            assert outbox.size == 0
            sent = [m for frame in frames for e in frame for m in (e[2] if e[0] == wire.TELL_RUN else [e[2]])]
            expected = [m for m in arrived if not isinstance(m, Unschematic)]
            assert len(sent) == forwarded == len(expected)
            assert all(a is b for a, b in zip(sent, expected, strict=True))  # every message, in arrival order
            runs = [e[2] for frame in frames for e in frame if e[0] == wire.TELL_RUN]
            assert all(0 < len(run) <= RUN_LIMIT and len({type(m) for m in run}) == 1 for run in runs)

    # Regression: a backlog of one type grew runs past RUN_LIMIT (a group was added whole to a run below it).
    def test_take_tells_one_type_backlog_runs_at_most_run_limit(self) -> None:
        host = Outbox(COUNTER_SCHEMA)
        queue = host.mailbox.queue
        code = COUNTER_SCHEMA.accept_codes[Add]
        queue.extend(Add(value=i) for i in range(2000))
        forwarded = calls = 0
        while queue:
            forwarded += host.take_tells(code, queue.popleft())
            calls += 1
        assert forwarded == 2000
        assert calls == 8  # each call takes at most the drain loop's batch behind its own message
        assert host.mailbox.processed == 2000 - calls  # the drain loop counted the first of each call itself
        assert [len(entry[2]) for entry in host.outbox.entries] == [512, 512, 512, 464]

    def test_take_all_empties_and_counts_the_actors_messages(self) -> None:
        host = Outbox(COUNTER_SCHEMA)
        host.take_tells(COUNTER_SCHEMA.accept_codes[Add], Add(value=1))
        host.outbox.put((wire.ASK, COUNTER_SCHEMA.accept_codes[Total], Total(), 1))
        host.outbox.put((wire.STOP, 1.0))
        entries = host.outbox.take_all()
        assert (host.outbox.entries, host.outbox.size) == ([], 0)
        assert WorkerOutbox.messages_in(entries) == 2  # the tell and the ask; the stop is not the actor's

    def test_encode_plain_run_without_its_unencodable_message(self) -> None:
        host = Outbox(COUNTER_SCHEMA)
        code = COUNTER_SCHEMA.accept_codes[Greeting]
        run = [Greeting(text="a"), Greeting(text="\ud800"), Greeting(text="b")]  # a lone surrogate: no UTF-8
        body = host.outbox.encode([(wire.TELL_RUN, code, run), (wire.ASK, 7, Greeted(), 3)])
        run_item, ask_item = wire.DOWN_BATCH.decode(body[wire.LENGTH :])
        assert isinstance(run_item, wire.TellRun)
        assert isinstance(ask_item, wire.Ask)
        messages, errors = RunReader(COUNTER_SCHEMA).read(run_item.code, run_item.body)
        assert (messages, errors) == ([Greeting(text="a"), Greeting(text="b")], [])
        assert host.dropped == [run[1]]

    # Regression: with a wire form, the run kept without its unencodable message was the kept messages' columns
    # laid end to end, which the worker rejected whole: every good message of the run was lost, uncounted.
    def test_encode_wire_form_run_without_its_unencodable_message(self) -> None:
        host = Outbox(MONITOR_SCHEMA)
        good, bad, also_good = tapped()[:3]
        bad = msgspec.structs.replace(bad, run_id="r1\ud800")
        body = host.outbox.encode([(wire.TELL_RUN, STAMPED_CODE, [good, bad, also_good])])
        (item,) = wire.DOWN_BATCH.decode(body[wire.LENGTH :])
        assert isinstance(item, wire.TellRun)
        messages, errors = RunReader(MONITOR_SCHEMA).read(item.code, item.body)
        assert (messages, errors) == ([good, also_good], [])
        assert host.dropped == [bad]
