from __future__ import annotations

from typing import Any

import ag_ui.core as agui
import msgspec
import pytest
from hypothesis import given, settings, strategies as st
from pydantic import BaseModel, TypeAdapter

from actors.chat._events import (
    _UNSUPPORTED_AGUI_TYPES,
    EVENT_CLASSES,
    AgentEvent,
    AudioPart,
    CancelledOutcome,
    Custom,
    DataSource,
    DocumentPart,
    FileSource,
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
    VideoPart,
    encode_event,
    parse_event,
    stamp,
)
from tests.unit.test_events import SAMPLE_EVENTS

AGUI_EVENT: TypeAdapter[Any] = TypeAdapter(agui.Event)

# Our struct → the ag_ui model it must match field for field.
MODEL_OF: dict[type[msgspec.Struct], type[BaseModel]] = {
    RunStarted: agui.RunStartedEvent,
    RunFinished: agui.RunFinishedEvent,
    RunError: agui.RunErrorEvent,
    StepStarted: agui.StepStartedEvent,
    StepFinished: agui.StepFinishedEvent,
    TextMessageStart: agui.TextMessageStartEvent,
    TextMessageContent: agui.TextMessageContentEvent,
    TextMessageEnd: agui.TextMessageEndEvent,
    ToolCallStart: agui.ToolCallStartEvent,
    ToolCallArgs: agui.ToolCallArgsEvent,
    ToolCallEnd: agui.ToolCallEndEvent,
    ToolCallResult: agui.ToolCallResultEvent,
    ReasoningStart: agui.ReasoningStartEvent,
    ReasoningMessageStart: agui.ReasoningMessageStartEvent,
    ReasoningMessageContent: agui.ReasoningMessageContentEvent,
    ReasoningMessageEnd: agui.ReasoningMessageEndEvent,
    ReasoningEnd: agui.ReasoningEndEvent,
    Custom: agui.CustomEvent,
    TokenUsage: agui.TokenUsage,
    Interrupt: agui.Interrupt,
    SuccessOutcome: agui.RunFinishedSuccessOutcome,
    InterruptOutcome: agui.RunFinishedInterruptOutcome,
    CancelledOutcome: agui.RunFinishedCancelledOutcome,
    TextPart: agui.TextPart,
    ImagePart: agui.ImagePart,
    AudioPart: agui.AudioPart,
    VideoPart: agui.VideoPart,
    DocumentPart: agui.DocumentPart,
    DataSource: agui.DataSource,
    UrlSource: agui.UrlSource,
    FileSource: agui.FileSource,
}


def _our_wire_fields(cls: type[msgspec.Struct]) -> dict[str, bool]:
    """Wire name → required, including the tag field."""
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    fields = {f.encode_name: f.required for f in info.fields}
    if info.tag_field is not None:
        fields[info.tag_field] = False
    return fields


def _their_wire_fields(model: type[BaseModel]) -> dict[str, bool]:
    return {(f.alias or name): f.is_required() for name, f in model.model_fields.items()}


def _assert_ag_ui_accepts(frame: bytes, event: AgentEvent) -> None:
    model = AGUI_EVENT.validate_json(frame)
    assert type(model) is MODEL_OF[type(event)]
    # Same JSON document both ways: their canonical dump is what we sent, and it decodes back to our event.
    their_frame = model.model_dump_json(by_alias=True)
    assert msgspec.json.decode(their_frame) == msgspec.json.decode(frame)
    assert parse_event(their_frame) == parse_event(frame)


class TestSchemaShape:
    @pytest.mark.parametrize("ours", list(MODEL_OF), ids=lambda c: c.__name__)
    def test_fields_and_requiredness_match_ag_ui(self, ours: type[msgspec.Struct]) -> None:
        ours_fields = _our_wire_fields(ours)
        theirs = _their_wire_fields(MODEL_OF[ours])
        assert set(ours_fields) == set(theirs)
        # AG-UI's pydantic models default the fixed role of REASONING_MESSAGE_START as we do.
        assert ours_fields == theirs

    def test_every_ag_ui_type_is_modelled_or_named_unsupported(self) -> None:
        spec_types = {member.value for member in agui.EventType}
        assert set(EVENT_CLASSES) | _UNSUPPORTED_AGUI_TYPES == spec_types
        assert not set(EVENT_CLASSES) & _UNSUPPORTED_AGUI_TYPES

    @pytest.mark.parametrize("wire_type", sorted(_UNSUPPORTED_AGUI_TYPES))
    def test_unsupported_ag_ui_types_are_rejected_by_name(self, wire_type: str) -> None:
        with pytest.raises(InvalidEvent, match=f"'{wire_type}' is not supported"):
            parse_event(msgspec.json.encode({"type": wire_type}))


class TestOursValidateWithAgUi:
    @pytest.mark.parametrize("event", SAMPLE_EVENTS, ids=lambda e: type(e).__name__)
    def test_sample_event_validates_with_ag_ui(self, event: AgentEvent) -> None:
        _assert_ag_ui_accepts(encode_event(event), event)

    @pytest.mark.parametrize("event", SAMPLE_EVENTS, ids=lambda e: type(e).__name__)
    def test_stamped_frame_validates_with_ag_ui(self, event: AgentEvent) -> None:
        stamped = stamp(event, thread_id="t", run_id="r", seq=12, observed_at=0)
        model = AGUI_EVENT.validate_json(stamped.frame)
        assert model.metadata["seq"] == 12


_SAFE = 2**53 - 1
_ids = st.text(max_size=8)
_optional_ids = st.none() | _ids
_json: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-_SAFE, _SAFE)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
_metadata = st.none() | st.dictionaries(st.text(max_size=4), _json, max_size=3)
_counts = st.none() | st.integers(0, _SAFE)
_usage = st.none() | st.lists(
    st.builds(
        TokenUsage,
        provider=_optional_ids,
        model=_optional_ids,
        input_tokens=_counts,
        output_tokens=_counts,
        total_tokens=_counts,
        reasoning_tokens=_counts,
        cached_input_tokens=_counts,
        cache_write_input_tokens=_counts,
    ),
    max_size=2,
)
_interrupt = st.builds(
    Interrupt,
    id=_ids,
    reason=_ids,
    subagent_run_id=_optional_ids,
    message=_optional_ids,
    tool_call_id=_optional_ids,
    response_schema=_metadata,
    expires_at=_optional_ids,
    metadata=_metadata,
)
_outcome = st.one_of(
    st.none(),
    st.builds(SuccessOutcome, pending_tool_call_ids=st.none() | st.lists(_ids, max_size=2)),
    st.builds(InterruptOutcome, interrupts=st.lists(_interrupt, min_size=1, max_size=2)),
    st.just(CancelledOutcome()),
)
_source = st.one_of(
    st.builds(DataSource, value=_ids, mime_type=_ids),
    st.builds(UrlSource, value=_ids, mime_type=_optional_ids),
    st.builds(FileSource, value=_ids, provider=_optional_ids, mime_type=_optional_ids),
)
_part = st.one_of(
    st.builds(TextPart, text=_ids, id=_optional_ids, metadata=_json),
    *(
        st.builds(cls, source=_source, id=_optional_ids, metadata=_json)
        for cls in (ImagePart, AudioPart, VideoPart, DocumentPart)
    ),
)
_base = {"timestamp": st.none() | st.integers(-_SAFE, _SAFE), "raw_event": _json, "metadata": _metadata}
_attributed = {**_base, "subagent_run_id": _optional_ids}
_events: st.SearchStrategy[AgentEvent] = st.one_of(
    st.builds(
        RunStarted,
        thread_id=_ids,
        run_id=_ids,
        protocol_version=_optional_ids,
        parent_run_id=_optional_ids,
        input=st.none() | st.just({"threadId": "t", "runId": "r", "messages": []}),
        **_base,
    ),
    st.builds(RunFinished, thread_id=_ids, run_id=_ids, result=_json, outcome=_outcome, usage=_usage, **_base),
    st.builds(RunError, message=_ids, code=_optional_ids, usage=_usage, **_base),
    st.builds(StepStarted, step_name=_ids, **_attributed),
    st.builds(StepFinished, step_name=_ids, **_attributed),
    st.builds(
        TextMessageStart,
        message_id=_ids,
        role=st.none() | st.sampled_from(["developer", "system", "assistant", "user"]),
        name=_optional_ids,
        **_attributed,
    ),
    st.builds(TextMessageContent, message_id=_ids, delta=st.text(), **_attributed),
    st.builds(TextMessageEnd, message_id=_ids, **_attributed),
    st.builds(ToolCallStart, tool_call_id=_ids, tool_call_name=_ids, parent_message_id=_optional_ids, **_attributed),
    st.builds(ToolCallArgs, tool_call_id=_ids, delta=st.text(), **_attributed),
    st.builds(ToolCallEnd, tool_call_id=_ids, **_attributed),
    st.builds(
        ToolCallResult,
        message_id=_ids,
        tool_call_id=_ids,
        content=st.text() | st.lists(_part, max_size=3),
        role=st.none() | st.just("tool"),
        **_attributed,
    ),
    st.builds(ReasoningStart, message_id=_ids, **_attributed),
    st.builds(ReasoningMessageStart, message_id=_ids, **_attributed),
    st.builds(ReasoningMessageContent, message_id=_ids, delta=st.text(), **_attributed),
    st.builds(ReasoningMessageEnd, message_id=_ids, **_attributed),
    st.builds(ReasoningEnd, message_id=_ids, **_attributed),
    st.builds(Custom, name=_ids, value=_json, **_attributed),
)


class TestGeneratedEventsConform:
    @settings(max_examples=300, deadline=None)
    @given(event=_events)
    def test_any_event_we_encode_validates_with_ag_ui_and_round_trips(self, event: AgentEvent) -> None:
        frame = encode_event(event)
        _assert_ag_ui_accepts(frame, event)
        assert parse_event(frame) == event


# Events built with the reference SDK's own Python API, one per type we model.
THEIR_EVENTS: list[BaseModel] = [
    agui.RunStartedEvent(thread_id="t", run_id="r", parent_run_id="p", timestamp=1, metadata={"k": None}),
    agui.RunFinishedEvent(
        thread_id="t",
        run_id="r",
        result=[1, "two"],
        outcome=agui.RunFinishedInterruptOutcome(interrupts=[agui.Interrupt(id="i", reason="approve")]),
        usage=[agui.TokenUsage(model="m", total_tokens=3)],
    ),
    agui.RunErrorEvent(message="failed", code="E1"),
    agui.StepStartedEvent(step_name="s", subagent_run_id="sub"),
    agui.StepFinishedEvent(step_name="s"),
    agui.TextMessageStartEvent(message_id="m", role="user", name="ann"),
    agui.TextMessageContentEvent(message_id="m", delta="hi"),
    agui.TextMessageEndEvent(message_id="m"),
    agui.ToolCallStartEvent(tool_call_id="c", tool_call_name="search", parent_message_id="m"),
    agui.ToolCallArgsEvent(tool_call_id="c", delta="{}"),
    agui.ToolCallEndEvent(tool_call_id="c", raw_event={"provider": "native"}),
    agui.ToolCallResultEvent(
        message_id="m2",
        tool_call_id="c",
        content=[agui.TextPart(text="t"), agui.DocumentPart(source=agui.FileSource(value="file-1", provider="openai"))],
        role="tool",
    ),
    agui.ReasoningStartEvent(message_id="r"),
    agui.ReasoningMessageStartEvent(message_id="r1"),
    agui.ReasoningMessageContentEvent(message_id="r1", delta="think"),
    agui.ReasoningMessageEndEvent(message_id="r1"),
    agui.ReasoningEndEvent(message_id="r"),
    agui.CustomEvent(name="n", value={"x": 1}),
]


class TestAgUiEventsDecodeWithOurs:
    def test_their_samples_cover_every_type_we_model(self) -> None:
        assert {m.type.value for m in THEIR_EVENTS} == set(EVENT_CLASSES)  # type: ignore[attr-defined]

    @pytest.mark.parametrize("model", THEIR_EVENTS, ids=lambda m: type(m).__name__)
    def test_their_dump_decodes_to_the_same_document(self, model: BaseModel) -> None:
        their_frame = model.model_dump_json(by_alias=True)
        event = parse_event(their_frame)
        assert type(event).__struct_config__.tag == model.type.value  # type: ignore[attr-defined]
        assert msgspec.json.decode(encode_event(event)) == msgspec.json.decode(their_frame)
