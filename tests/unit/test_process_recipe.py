from __future__ import annotations

import socket  # noqa: TC003  # msgspec resolves Holder's annotation at run time
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from actors import ActorFailed, ActorStopped, AskTimeout, Message
from actors.process import ActorRecipe, MessageSchema, ProcessIsolation, RemoteError, _wire as wire
from supervisors import ChildSpec, InvalidChildSpec, Shutdown
from tests.behaviour._process_kit import Add, Refuses, Report, Total

if TYPE_CHECKING:
    from pathlib import Path

KIT = "tests.behaviour._process_kit"


class Holder(Message, frozen=True, kw_only=True):
    sock: socket.socket


class TestActorRecipe:
    def test_recipe_module_level_factory_with_matching_args_accepted(self) -> None:
        recipe = ActorRecipe(f"{KIT}:build_counter", 3, "journal")
        assert recipe.target == f"{KIT}:build_counter"
        assert recipe.args == (3, "journal")
        assert msgspec.msgpack.decode(recipe.encoded_args) == [3, "journal"]
        assert recipe == ActorRecipe(f"{KIT}:build_counter", 3, "journal")
        assert recipe != ActorRecipe(f"{KIT}:build_counter", 4, "journal")

    @pytest.mark.parametrize(
        ("target", "rule"),
        [
            ("no_colon_here", "must be 'package.module:callable'"),
            ("no.such.module:build", "cannot be imported"),
            (f"{KIT}:no_such_factory", "cannot be imported"),
            (f"{KIT}:Refuses", "decorated with @worker_factory"),
        ],
    )
    def test_recipe_bad_target_rejected_with_rule(self, target: str, rule: str) -> None:
        with pytest.raises(ValueError, match=rule):
            ActorRecipe(target)

    def test_recipe_unencodable_arg_rejected(self) -> None:
        with pytest.raises(ValueError, match="must be msgspec-encodable"):
            ActorRecipe(f"{KIT}:build_counter", 0, object())

    def test_recipe_arg_not_matching_annotation_rejected(self) -> None:
        with pytest.raises(ValueError, match="do not decode as the factory's annotations"):
            ActorRecipe(f"{KIT}:build_counter", "zero", "journal")

    def test_recipe_too_many_args_rejected(self) -> None:
        with pytest.raises(ValueError, match="takes 4 positional arguments, got 5"):
            ActorRecipe(f"{KIT}:build_counter", 0, "journal", 0.0, False, "extra")

    def test_recipe_called_builds_actor_in_this_process(self, tmp_path: Path) -> None:
        marker = tmp_path / "built"
        actor = ActorRecipe(f"{KIT}:build_refusing", str(marker))()
        assert isinstance(actor, Refuses)
        assert marker.exists()


class TestMessageSchema:
    def test_schema_codes_are_positions_unknown_type_none(self) -> None:
        schema = MessageSchema(accepts=(Add, Total), replies={Total: int}, sends=(Report,))
        assert schema.accept_code(Add(value=1)) == 0
        assert schema.accept_code(Total()) == 1
        assert schema.accept_code("text") is None
        assert schema.send_code(Report(pid=1, total=2)) == 0
        assert schema.send_code(Add(value=1)) is None

    def test_schema_reply_for_type_not_accepted_rejected(self) -> None:
        with pytest.raises(ValueError, match="not in accepts"):
            MessageSchema(accepts=(Add,), replies={Total: int})

    def test_schema_duplicate_type_rejected(self) -> None:
        with pytest.raises(ValueError, match="lists Add twice"):
            MessageSchema(accepts=(Add, Add))

    def test_schema_type_holding_unencodable_class_rejected(self) -> None:
        with pytest.raises(TypeError, match="contains socket"):
            MessageSchema(accepts=(Holder,))


class TestChildSpecIsolation:
    def test_childspec_process_isolation_lambda_start_rejected_naming_field(self) -> None:
        with pytest.raises(InvalidChildSpec) as invalid:
            ChildSpec("monitor", lambda: None, isolation="process")
        assert invalid.value.field == "start"
        assert "cannot cross a process boundary" in invalid.value.rule
        assert "<lambda>" in invalid.value.rule

    def test_childspec_process_isolation_recipe_accepted(self) -> None:
        spec = ChildSpec("counter", ActorRecipe(f"{KIT}:build_counter", 0, "j"), isolation="process")
        assert spec.isolation == "process"

    def test_childspec_unknown_isolation_rejected(self) -> None:
        with pytest.raises(InvalidChildSpec) as invalid:
            ChildSpec("x", lambda: None, isolation="thread")  # type: ignore[arg-type]
        assert invalid.value.field == "isolation"

    def test_childspec_shutdown_shorter_than_graceful_stop_rejected_brutal_accepted(self) -> None:
        recipe = ActorRecipe(f"{KIT}:build_counter", 0, "j")
        options = ProcessIsolation(stop_timeout=2.0, terminate_timeout=1.0)
        with pytest.raises(InvalidChildSpec) as invalid:
            ChildSpec("counter", recipe, isolation=options, shutdown=2.5)
        assert invalid.value.field == "shutdown"
        assert ChildSpec("counter", recipe, isolation=options, shutdown=Shutdown.BRUTAL).shutdown is Shutdown.BRUTAL
        assert ChildSpec("counter", recipe, isolation=options, shutdown=3.0).shutdown == 3.0


class TestProcessIsolationOptions:
    def test_options_heartbeat_timeout_not_over_twice_interval_rejected(self) -> None:
        with pytest.raises(ValueError, match="heartbeat_timeout must be > 2 x heartbeat_interval"):
            ProcessIsolation(heartbeat_interval=0.5, heartbeat_timeout=1.0)

    @pytest.mark.parametrize("field", ["heartbeat_interval", "start_timeout", "stop_timeout"])
    def test_options_negative_seconds_rejected(self, field: str) -> None:
        options: dict[str, Any] = {field: -1.0}
        with pytest.raises(ValueError, match=field):
            ProcessIsolation(**options)


class TestWire:
    def test_frame_length_prefix_then_batch_decodes_to_items(self) -> None:
        encoder = msgspec.msgpack.Encoder()
        body = wire.frame([(wire.TELL_UP, "journal", 2, Report(pid=1, total=3)), (wire.HEARTBEAT,)], encoder)
        assert int.from_bytes(body[: wire.LENGTH], "big") == len(body) - wire.LENGTH
        items = wire.UP_BATCH.decode(body[wire.LENGTH :])
        assert [type(item) for item in items] == [wire.TellUp, wire.Heartbeat]
        tell = items[0]
        assert isinstance(tell, wire.TellUp)
        assert (tell.target, tell.code) == ("journal", 2)
        assert msgspec.msgpack.decode(tell.body, type=Report) == Report(pid=1, total=3)

    @pytest.mark.parametrize(
        ("error", "expected"),
        [
            (ActorStopped("journal", "stopped"), ActorStopped),
            (AskTimeout("journal", 1.0), AskTimeout),
            (ActorFailed("journal", ValueError("bad")), ActorFailed),
        ],
    )
    def test_failure_crosses_as_matching_actor_error(self, error: Exception, expected: type[Exception]) -> None:
        failure = msgspec.msgpack.decode(msgspec.msgpack.encode(wire.failure_of(error, "journal")), type=wire.Failure)
        rebuilt = wire.error_from(failure, 1.0)
        assert type(rebuilt) is expected
        if isinstance(rebuilt, ActorFailed):
            assert isinstance(rebuilt.cause, RemoteError)
            assert rebuilt.cause.error_type == "ValueError"
            assert "bad" in str(rebuilt.cause)
