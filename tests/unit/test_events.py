from __future__ import annotations

import pickle
import types
import typing
from typing import Any

import msgspec
import pytest

from actors.chat._aliases import (
    SEED_ALIASES,
    agent_completed,
    agent_started,
    agent_thinking,
    tool_completed,
    tool_executing,
)
from actors.chat._events import (
    DELTA_EVENT_TYPES,
    EVENT_CLASSES,
    LIFECYCLE_EVENT_TYPES,
    AgentEvent,
    BaseEvent,
    CancelledOutcome,
    Custom,
    DataSource,
    ImagePart,
    Interrupt,
    InterruptOutcome,
    InvalidEvent,
    ReasoningEnd,
    ReasoningMessageContent,
    ReasoningMessageEnd,
    ReasoningMessageStart,
    ReasoningStart,
    RunError,
    RunFinished,
    RunStarted,
    StampedEvent,
    StepFinished,
    StepStarted,
    SuccessOutcome,
    TextMessageContent,
    TextMessageEnd,
    TextMessageStart,
    TextPart,
    TokenUsage,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallResult,
    ToolCallStart,
    UrlSource,
    decode_event,
    encode_event,
    event_run_ids,
    is_delta,
    is_lifecycle,
    parse_event,
    stamp,
)

# One instance per event type with its optional fields set, and the minimal form of each: shared with the
# conformance and fuzz tests so every type is exercised everywhere.
FULL_EVENTS: list[AgentEvent] = [
    RunStarted(
        thread_id="t1",
        run_id="r1",
        protocol_version="1.0",
        parent_run_id="r0",
        input={"threadId": "t1", "runId": "r1", "messages": []},
        timestamp=1_700_000_000_000,
        raw_event={"provider": "x", "n": [1, 2.5, None]},
        metadata={"tenant": "acme"},
    ),
    RunFinished(
        thread_id="t1",
        run_id="r1",
        result={"answer": 42},
        outcome=InterruptOutcome(
            interrupts=[Interrupt(id="i1", reason="approval", tool_call_id="c1", response_schema={"type": "object"})]
        ),
        usage=[TokenUsage(provider="openai", model="m", input_tokens=10, output_tokens=5, total_tokens=15)],
    ),
    RunError(message="boom", code="E_TOOL", usage=[TokenUsage(reasoning_tokens=3)], timestamp=5),
    StepStarted(step_name="plan", subagent_run_id="sub-1"),
    StepFinished(step_name="plan"),
    TextMessageStart(message_id="m1", role="assistant", name="bot"),
    TextMessageContent(message_id="m1", delta="Hello, wörld \u2603"),
    TextMessageEnd(message_id="m1"),
    ToolCallStart(tool_call_id="c1", tool_call_name="search", parent_message_id="m1"),
    ToolCallArgs(tool_call_id="c1", delta='{"q": "cats"}'),
    ToolCallEnd(tool_call_id="c1"),
    ToolCallResult(
        message_id="m2",
        tool_call_id="c1",
        role="tool",
        content=[
            TextPart(text="found", id="p1", metadata={"source": "web"}),
            ImagePart(source=UrlSource(value="https://example.invalid/cat.png", mime_type="image/png")),
            ImagePart(source=DataSource(value="aGk=", mime_type="image/gif")),
        ],
    ),
    ReasoningStart(message_id="rs1"),
    ReasoningMessageStart(message_id="rm1"),
    ReasoningMessageContent(message_id="rm1", delta=""),
    ReasoningMessageEnd(message_id="rm1"),
    ReasoningEnd(message_id="rs1"),
    Custom(name="progress", value=None),
]
MINIMAL_EVENTS: list[AgentEvent] = [
    RunStarted(thread_id="t", run_id="r"),
    RunFinished(thread_id="t", run_id="r", outcome=SuccessOutcome(pending_tool_call_ids=["c9"])),
    RunFinished(thread_id="t", run_id="r", outcome=CancelledOutcome()),
    RunError(message="m"),
    ToolCallResult(message_id="m", tool_call_id="c", content="plain text"),
    Custom(name="n", value=[1, {"a": None}]),
]
SAMPLE_EVENTS: list[AgentEvent] = FULL_EVENTS + MINIMAL_EVENTS


def _wire(event: AgentEvent) -> dict[str, Any]:
    obj = msgspec.json.decode(encode_event(event))
    assert isinstance(obj, dict)
    return obj


def _ids(events: list[AgentEvent]) -> list[str]:
    return [f"{i}-{type(e).__name__}" for i, e in enumerate(events)]


class TestRoundTrip:
    def test_samples_cover_every_event_type(self) -> None:
        assert {type(e) for e in FULL_EVENTS} == set(EVENT_CLASSES.values())

    @pytest.mark.parametrize("event", SAMPLE_EVENTS, ids=_ids(SAMPLE_EVENTS))
    def test_encode_then_decode_returns_equal_event(self, event: AgentEvent) -> None:
        frame = encode_event(event)
        assert decode_event(frame) == event
        assert decode_event(frame.decode()) == event
        assert parse_event(frame) == event
        assert parse_event(frame.decode()) == event

    def test_event_classes_maps_every_wire_type(self) -> None:
        assert EVENT_CLASSES["TOOL_CALL_START"] is ToolCallStart
        assert EVENT_CLASSES["REASONING_MESSAGE_CONTENT"] is ReasoningMessageContent
        for wire_type, cls in EVENT_CLASSES.items():
            assert cls.__struct_config__.tag == wire_type
        assert len(EVENT_CLASSES) == 18


class TestWireNames:
    def test_tool_call_start_uses_camel_case_names(self) -> None:
        wire = _wire(ToolCallStart(tool_call_id="c", tool_call_name="n", parent_message_id="m", raw_event=1))
        assert wire == {
            "type": "TOOL_CALL_START",
            "rawEvent": 1,
            "toolCallId": "c",
            "toolCallName": "n",
            "parentMessageId": "m",
        }

    def test_run_started_uses_camel_case_names(self) -> None:
        wire = _wire(RunStarted(thread_id="t", run_id="r", parent_run_id="p", protocol_version="1.0"))
        assert wire == {
            "type": "RUN_STARTED",
            "threadId": "t",
            "runId": "r",
            "parentRunId": "p",
            "protocolVersion": "1.0",
        }

    @pytest.mark.parametrize("event", FULL_EVENTS, ids=_ids(FULL_EVENTS))
    def test_no_wire_key_is_snake_case(self, event: AgentEvent) -> None:
        def keys(value: Any, opaque: bool) -> list[str]:
            if isinstance(value, dict):
                own = [] if opaque else list(value)
                # Values under these keys are the producer's JSON, not our schema.
                return own + [
                    k
                    for key, v in value.items()
                    for k in keys(v, opaque or key in {"metadata", "rawEvent", "value", "result", "input"})
                ]
            if isinstance(value, list):
                return [k for v in value for k in keys(v, opaque)]
            return []

        assert [k for k in keys(_wire(event), False) if "_" in k] == []

    def test_unset_optional_fields_are_absent_not_null(self) -> None:
        assert _wire(TextMessageStart(message_id="m")) == {"type": "TEXT_MESSAGE_START", "messageId": "m"}

    def test_custom_value_null_is_kept_because_it_is_required(self) -> None:
        assert _wire(Custom(name="n", value=None)) == {"type": "CUSTOM", "name": "n", "value": None}

    def test_reasoning_message_start_always_carries_its_fixed_role(self) -> None:
        assert _wire(ReasoningMessageStart(message_id="m"))["role"] == "reasoning"
        decoded = parse_event(b'{"type":"REASONING_MESSAGE_START","messageId":"m"}')
        assert decoded == ReasoningMessageStart(message_id="m")

    def test_run_finished_outcome_is_tagged_by_type(self) -> None:
        wire = _wire(RunFinished(thread_id="t", run_id="r", outcome=SuccessOutcome(pending_tool_call_ids=["a"])))
        assert wire["outcome"] == {"type": "success", "pendingToolCallIds": ["a"]}


class TestSeedAliases:
    def test_alias_table_names_the_five_seed_events(self) -> None:
        assert dict(SEED_ALIASES) == {
            "agent_started": RunStarted,
            "agent_thinking": ReasoningStart,
            "tool_executing": ToolCallStart,
            "tool_completed": ToolCallEnd,
            "agent_completed": RunFinished,
        }

    def test_agent_started_snake_case_becomes_run_started(self) -> None:
        obj = {"type": "agent_started", "thread_id": "t", "run_id": "r", "timestamp": 7, "agent_name": "triage"}
        event = parse_event(msgspec.json.encode(obj))
        assert event == RunStarted(thread_id="t", run_id="r", timestamp=7, raw_event=obj)

    def test_agent_started_camel_case_becomes_run_started(self) -> None:
        event = parse_event(b'{"type":"agent_started","threadId":"t","runId":"r"}')
        assert isinstance(event, RunStarted)
        assert (event.thread_id, event.run_id) == ("t", "r")

    def test_tool_executing_maps_tool_name_and_moves_ids_to_metadata(self) -> None:
        obj = {
            "type": "tool_executing",
            "tool_call_id": "c1",
            "tool_name": "search",
            "thread_id": "t",
            "run_id": "r",
            "metadata": {"trace": "x", "runId": "stale"},
        }
        event = parse_event(msgspec.json.encode(obj))
        assert isinstance(event, ToolCallStart)
        assert (event.tool_call_id, event.tool_call_name) == ("c1", "search")
        # The explicit run_id wins over the stale metadata key; other keys are kept.
        assert event.metadata == {"trace": "x", "threadId": "t", "runId": "r"}
        assert event.raw_event == obj
        assert event_run_ids(event) == ("t", "r")

    @pytest.mark.parametrize("spelling", ["tool_name", "toolName", "tool_call_name", "toolCallName"])
    def test_tool_executing_accepts_every_tool_name_spelling(self, spelling: str) -> None:
        event = parse_event(msgspec.json.encode({"type": "tool_executing", "toolCallId": "c", spelling: "s"}))
        assert event == ToolCallStart(tool_call_id="c", tool_call_name="s", raw_event=event.raw_event)

    def test_tool_completed_becomes_tool_call_end_and_keeps_result_in_raw_event(self) -> None:
        obj = {"type": "tool_completed", "tool_call_id": "c1", "result": {"rows": 3}}
        event = parse_event(msgspec.json.encode(obj))
        assert event == ToolCallEnd(tool_call_id="c1", raw_event=obj)

    def test_agent_completed_becomes_run_finished_with_result(self) -> None:
        event = parse_event(b'{"type":"agent_completed","thread_id":"t","run_id":"r","result":"done"}')
        assert isinstance(event, RunFinished)
        assert (event.thread_id, event.run_id, event.result) == ("t", "r", "done")

    def test_agent_thinking_without_message_id_derives_it_from_run_id(self) -> None:
        event = parse_event(b'{"type":"agent_thinking","thread_id":"t","run_id":"r","thought":"hmm"}')
        assert isinstance(event, ReasoningStart)
        assert event.message_id == "r:thinking"
        assert event.metadata == {"threadId": "t", "runId": "r"}

    def test_agent_thinking_with_message_id_keeps_it(self) -> None:
        event = parse_event(b'{"type":"agent_thinking","message_id":"m7"}')
        assert isinstance(event, ReasoningStart)
        assert event.message_id == "m7"

    def test_agent_thinking_without_any_id_names_message_id(self) -> None:
        with pytest.raises(InvalidEvent) as info:
            parse_event(b'{"type":"agent_thinking","thread_id":"t"}')
        assert info.value.field == "$.message_id"

    def test_seed_missing_field_is_named_in_seed_spelling(self) -> None:
        with pytest.raises(InvalidEvent, match=r"^\$\.tool_name: missing required field$"):
            parse_event(b'{"type":"tool_executing","tool_call_id":"c"}')

    def test_seed_wrong_type_is_named_as_sent(self) -> None:
        with pytest.raises(InvalidEvent, match=r"^\$\.toolName: expected str, got int$"):
            parse_event(b'{"type":"tool_executing","tool_call_id":"c","toolName":5}')

    def test_seed_run_id_of_wrong_type_is_named_even_when_moved_to_metadata(self) -> None:
        with pytest.raises(InvalidEvent, match=r"^\$\.run_id: expected str, got array$"):
            parse_event(b'{"type":"tool_completed","tool_call_id":"c","run_id":[]}')

    def test_seed_metadata_must_be_an_object(self) -> None:
        with pytest.raises(InvalidEvent, match=r"^\$\.metadata: expected object, got str$"):
            parse_event(b'{"type":"tool_completed","tool_call_id":"c","run_id":"r","metadata":"x"}')

    def test_seed_field_given_in_two_spellings_is_rejected(self) -> None:
        with pytest.raises(InvalidEvent) as info:
            parse_event(b'{"type":"agent_started","thread_id":"a","threadId":"b","run_id":"r"}')
        assert info.value.field == "$.threadId"
        assert "given twice" in info.value.rule

    def test_seed_object_with_its_own_raw_event_keeps_it(self) -> None:
        event = parse_event(b'{"type":"agent_started","thread_id":"t","run_id":"r","raw_event":{"v":1}}')
        assert event.raw_event == {"v": 1}

    def test_helpers_build_the_same_events_as_seed_input(self) -> None:
        def parsed(**obj: Any) -> AgentEvent:
            return msgspec.structs.replace(parse_event(msgspec.json.encode(obj)), raw_event=None)

        assert agent_started("t", "r", timestamp=3) == parsed(
            type="agent_started", thread_id="t", run_id="r", timestamp=3
        )
        assert agent_thinking("t", "r") == parsed(type="agent_thinking", thread_id="t", run_id="r")
        assert tool_executing("c", "search", thread_id="t", run_id="r") == parsed(
            type="tool_executing", tool_call_id="c", tool_name="search", thread_id="t", run_id="r"
        )
        assert tool_completed("c", run_id="r") == parsed(type="tool_completed", tool_call_id="c", run_id="r")
        assert agent_completed("t", "r", result=1) == parsed(
            type="agent_completed", thread_id="t", run_id="r", result=1
        )

    def test_helpers_keep_caller_metadata(self) -> None:
        event = tool_completed("c", thread_id="t", metadata={"k": 1})
        assert event.metadata == {"k": 1, "threadId": "t"}
        assert tool_completed("c").metadata is None

    def test_unknown_type_is_named(self) -> None:
        with pytest.raises(InvalidEvent, match=r"^\$\.type: unknown event type 'agent_exploded'$"):
            parse_event(b'{"type":"agent_exploded"}')

    def test_duplicate_type_keys_with_an_unhashable_last_value_are_invalid(self) -> None:
        # Regression: the alias lookup hashed the last "type" value, so a list there raised TypeError.
        with pytest.raises(InvalidEvent, match=r"^\$\.type: unknown event type \[1\]$"):
            parse_event(b'{"type":"NOPE","type":[1]}')

    def test_ag_ui_type_we_do_not_model_says_not_supported(self) -> None:
        with pytest.raises(InvalidEvent, match="'STATE_SNAPSHOT' is not supported"):
            parse_event(b'{"type":"STATE_SNAPSHOT","snapshot":{}}')


class TestInvalidEvent:
    def test_wrong_type_names_the_field(self) -> None:
        with pytest.raises(InvalidEvent) as info:
            parse_event(b'{"type":"TOOL_CALL_START","toolCallId":1,"toolCallName":"n"}')
        assert str(info.value) == "$.toolCallId: expected str, got int"
        assert (info.value.field, info.value.rule) == ("$.toolCallId", "expected str, got int")

    def test_missing_field_names_the_field(self) -> None:
        with pytest.raises(InvalidEvent, match=r"^\$\.toolCallName: missing required field$"):
            parse_event(b'{"type":"TOOL_CALL_START","toolCallId":"c"}')

    def test_nested_missing_field_names_the_full_path(self) -> None:
        frame = b'{"type":"RUN_FINISHED","threadId":"t","runId":"r","outcome":{"type":"interrupt","interrupts":[{}]}}'
        with pytest.raises(InvalidEvent) as info:
            parse_event(frame)
        assert info.value.field == "$.outcome.interrupts[0].id"

    def test_missing_type_names_type(self) -> None:
        with pytest.raises(InvalidEvent, match=r"^\$\.type: missing required field$"):
            parse_event(b'{"threadId":"t"}')

    def test_type_of_wrong_kind_names_type(self) -> None:
        with pytest.raises(InvalidEvent) as info:
            parse_event(b'{"type":7}')
        assert info.value.field == "$.type"

    def test_bad_enum_value_names_the_field(self) -> None:
        with pytest.raises(InvalidEvent, match=r"^\$\.role: invalid enum value 'robot'$"):
            parse_event(b'{"type":"TEXT_MESSAGE_START","messageId":"m","role":"robot"}')

    def test_timestamp_beyond_json_safe_range_is_rejected(self) -> None:
        with pytest.raises(InvalidEvent) as info:
            parse_event(b'{"type":"TEXT_MESSAGE_END","messageId":"m","timestamp":9007199254740992}')
        assert info.value.field == "$.timestamp"

    def test_non_object_frame_names_the_root(self) -> None:
        with pytest.raises(InvalidEvent, match=r"^\$: expected object, got array$"):
            parse_event(b"[1, 2]")

    def test_malformed_json_has_no_field(self) -> None:
        with pytest.raises(InvalidEvent) as info:
            parse_event(b'{"type": "RUN_STARTED", ')
        assert info.value.field is None
        assert info.value.rule.startswith("malformed JSON")

    def test_frame_over_max_bytes_is_rejected_before_parsing(self) -> None:
        frame = encode_event(TextMessageContent(message_id="m", delta="x" * 100))
        assert parse_event(frame, max_bytes=len(frame)) == decode_event(frame)
        with pytest.raises(InvalidEvent, match=f"over the {len(frame) - 1}-byte limit"):
            parse_event(frame, max_bytes=len(frame) - 1)
        with pytest.raises(InvalidEvent, match="byte limit"):
            parse_event(frame.decode(), max_bytes=len(frame) - 1)

    def test_text_frame_limit_counts_utf8_bytes(self) -> None:
        frame = encode_event(TextMessageContent(message_id="m", delta="\u2603" * 10)).decode()
        with pytest.raises(InvalidEvent, match="byte limit"):
            parse_event(frame, max_bytes=len(frame))

    def test_default_limit_is_one_mebibyte(self) -> None:
        with pytest.raises(InvalidEvent, match="1048576-byte limit"):
            parse_event(b" " * (1024 * 1024 + 1))

    def test_invalid_utf8_is_rejected(self) -> None:
        with pytest.raises(InvalidEvent, match="not valid UTF-8"):
            parse_event(b'{"type":"TEXT_MESSAGE_END","messageId":"\xff"}')

    def test_lone_surrogate_in_text_is_rejected(self) -> None:
        with pytest.raises(InvalidEvent, match="not valid Unicode"):
            parse_event('{"type":"TEXT_MESSAGE_END","messageId":"\ud800"}')

    def test_deep_nesting_is_rejected(self) -> None:
        deep = b"[" * 100_000 + b"]" * 100_000
        with pytest.raises(InvalidEvent, match="nested too deeply"):
            parse_event(b'{"type":"CUSTOM","name":"n","value":' + deep + b"}")
        with pytest.raises(InvalidEvent, match="nested too deeply"):
            parse_event(b'{"type":"agent_started","thread_id":"t","run_id":"r","x":' + deep + b"}")

    def test_echoed_values_are_clipped(self) -> None:
        with pytest.raises(InvalidEvent) as info:
            parse_event(b'{"type":"' + b"Z" * 100_000 + b'"}')
        assert len(str(info.value)) < 300

    def test_non_positive_max_bytes_is_a_value_error(self) -> None:
        with pytest.raises(ValueError, match="max_bytes must be at least 1"):
            parse_event(b"{}", max_bytes=0)

    def test_non_bytes_input_is_a_type_error(self) -> None:
        with pytest.raises(TypeError, match="bytes or str"):
            parse_event(42)  # type: ignore[arg-type]

    def test_invalid_event_is_a_value_error_and_pickles(self) -> None:
        error = InvalidEvent("$.x", "expected str, got int")
        assert isinstance(error, ValueError)
        copy = pickle.loads(pickle.dumps(error))
        assert (copy.field, copy.rule, str(copy)) == ("$.x", "expected str, got int", "$.x: expected str, got int")
        assert str(InvalidEvent(None, "too large")) == "too large"


class TestStamp:
    def test_stamp_adds_seq_and_ids_to_metadata(self) -> None:
        stamped = stamp(ToolCallEnd(tool_call_id="c"), thread_id="t", run_id="r", seq=7, observed_at=1234)
        assert isinstance(stamped, StampedEvent)
        assert (stamped.thread_id, stamped.run_id, stamped.seq, stamped.observed_at) == ("t", "r", 7, 1234)
        assert msgspec.json.decode(stamped.frame) == {
            "type": "TOOL_CALL_END",
            "metadata": {"seq": 7, "threadId": "t", "runId": "r"},
            "toolCallId": "c",
        }

    def test_stamp_preserves_existing_metadata_keys(self) -> None:
        event = TextMessageEnd(message_id="m", metadata={"trace": "abc", "nested": {"k": [1]}})
        stamped = stamp(event, thread_id="t", run_id="r", seq=1, observed_at=0)
        assert _wire(stamped.event)["metadata"] == {
            "trace": "abc",
            "nested": {"k": [1]},
            "seq": 1,
            "threadId": "t",
            "runId": "r",
        }

    def test_stamp_overrides_a_producer_supplied_seq(self) -> None:
        event = TextMessageEnd(message_id="m", metadata={"seq": 999, "runId": "forged"})
        stamped = stamp(event, thread_id="t", run_id="r", seq=3, observed_at=0)
        assert msgspec.json.decode(stamped.frame)["metadata"] == {"seq": 3, "runId": "r", "threadId": "t"}

    def test_stamp_leaves_the_original_event_untouched(self) -> None:
        metadata = {"k": 1}
        event = TextMessageEnd(message_id="m", metadata=metadata)
        stamp(event, thread_id="t", run_id="r", seq=3, observed_at=0)
        assert event.metadata == {"k": 1}

    @pytest.mark.parametrize("event", SAMPLE_EVENTS, ids=_ids(SAMPLE_EVENTS))
    def test_frame_is_the_encoding_of_the_stamped_event(self, event: AgentEvent) -> None:
        stamped = stamp(event, thread_id='t"\\x', run_id="r\u2603", seq=2**40, observed_at=9)
        assert stamped.frame == encode_event(stamped.event)
        assert parse_event(stamped.frame) == stamped.event
        assert msgspec.structs.replace(stamped.event, metadata=event.metadata) == event
        # RUN_STARTED / RUN_FINISHED name their own ids; the others are found through the stamp's metadata.
        own = (event.thread_id, event.run_id) if isinstance(event, RunStarted | RunFinished) else None
        assert event_run_ids(stamped.event) == (own or ('t"\\x', "r\u2603"))


class TestLifecycle:
    def test_lifecycle_set_is_run_and_tool_call_boundaries(self) -> None:
        assert {
            RunStarted,
            RunFinished,
            RunError,
            ToolCallStart,
            ToolCallEnd,
            ToolCallResult,
        } == LIFECYCLE_EVENT_TYPES

    @pytest.mark.parametrize("event", FULL_EVENTS, ids=_ids(FULL_EVENTS))
    def test_is_lifecycle_matches_the_set(self, event: AgentEvent) -> None:
        assert is_lifecycle(event) is (type(event) in LIFECYCLE_EVENT_TYPES)

    def test_tool_call_args_is_a_delta_not_lifecycle(self) -> None:
        args = ToolCallArgs(tool_call_id="c", delta="{")
        assert not is_lifecycle(args)
        assert is_delta(args)

    def test_boundaries_are_never_deltas(self) -> None:
        expected: set[type[BaseEvent]] = {TextMessageContent, ToolCallArgs, ReasoningMessageContent}
        assert expected == DELTA_EVENT_TYPES
        assert not is_delta(TextMessageStart(message_id="m"))
        assert not is_delta(RunStarted(thread_id="t", run_id="r"))
        assert not DELTA_EVENT_TYPES & LIFECYCLE_EVENT_TYPES


class TestEventRunIds:
    def test_run_events_carry_their_ids(self) -> None:
        assert event_run_ids(RunStarted(thread_id="t", run_id="r")) == ("t", "r")
        assert event_run_ids(RunFinished(thread_id="t", run_id="r")) == ("t", "r")

    def test_other_events_are_read_from_metadata(self) -> None:
        event = RunError(message="x", metadata={"threadId": "t", "runId": "r"})
        assert event_run_ids(event) == ("t", "r")

    def test_missing_or_non_string_ids_are_none(self) -> None:
        assert event_run_ids(ToolCallEnd(tool_call_id="c")) == (None, None)
        assert event_run_ids(ToolCallEnd(tool_call_id="c", metadata={"threadId": 5, "runId": "r"})) == (None, "r")


class TestPublicNames:
    def test_package_all_is_sorted_and_resolves(self) -> None:
        import actors.chat

        # isort-style, as ruff's RUF022 keeps it: CONSTANTS, then Classes, then functions.
        def kind(name: str) -> tuple[int, str]:
            return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

        assert actors.chat.__all__ == sorted(actors.chat.__all__, key=kind)
        for name in actors.chat.__all__:
            assert hasattr(actors.chat, name), name

    def test_every_public_name_of_these_modules_is_exported(self) -> None:
        import actors.chat
        from actors.chat import _aliases, _events, _replay_ring

        for module in (_events, _aliases, _replay_ring):
            public = {
                name
                for name, value in vars(module).items()
                if not name.startswith("_")
                and name != "TYPE_CHECKING"
                and (
                    getattr(value, "__module__", None) == module.__name__
                    or name.isupper()
                    or isinstance(value, types.UnionType)
                    or typing.get_origin(value) is typing.Literal
                )
            }
            assert public - set(actors.chat.__all__) == set(), module.__name__


class TestAliasRegressions:
    def test_seed_thinking_with_non_object_metadata_is_invalid_event_not_crash(self) -> None:
        # Regression (found by the fuzzer): {"type": "agent_thinking", "metadata": true} raised AttributeError.
        with pytest.raises(InvalidEvent):
            parse_event(b'{"type": "agent_thinking", "metadata": true}')
