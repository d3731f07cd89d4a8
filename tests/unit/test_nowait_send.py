from __future__ import annotations

from actors.chat._connection import MemorySink, nowait_send


class SinkThatCannotSendNowait(MemorySink):
    sends_nowait = False


class SinkThatSaysItCan(MemorySink):
    sends_nowait = True


class TestNowaitSend:
    def test_sink_offering_the_fast_path_gets_its_nowait_method(self) -> None:
        sink = MemorySink()
        assert nowait_send(sink, "text") == sink.send_text_nowait
        assert nowait_send(sink, "bytes") == sink.send_bytes_nowait

    def test_sink_saying_it_cannot_send_nowait_gets_no_fast_path(self) -> None:
        assert nowait_send(SinkThatCannotSendNowait(), "text") is None
        assert nowait_send(SinkThatCannotSendNowait(), "bytes") is None

    def test_sink_saying_it_can_send_nowait_keeps_the_fast_path(self) -> None:
        sink = SinkThatSaysItCan()
        assert nowait_send(sink, "text") == sink.send_text_nowait

    def test_instance_that_turns_the_fast_path_off_gets_none(self) -> None:
        sink = MemorySink()
        sink.sends_nowait = False  # type: ignore[attr-defined]
        assert nowait_send(sink, "text") is None
