from __future__ import annotations

from typing import Any

import anyio
import pytest

from actors import Actor, ExitKind, open_actor_system
from tests.conftest import virtual_time

pytestmark = pytest.mark.anyio


class SlowStart(Actor[Any]):
    async def on_start(self) -> None:
        await anyio.sleep(10)

    async def receive(self, message: Any) -> Any:
        return message


class Idle(Actor[Any]):
    async def receive(self, message: Any) -> Any:
        return message


class TestStartCancellation:
    @virtual_time
    async def test_start_cancelled_during_on_start_instance_killed_and_name_freed(self) -> None:
        async with open_actor_system() as system:
            with anyio.move_on_after(1):
                await system.start(SlowStart, name="slow")
            assert "slow" not in system.names()
            ref = await system.start(Idle, name="slow")  # the name is free again
            assert await ref.ask(1) == 1

    async def test_brutal_stop_before_first_run_kills(self) -> None:
        async with open_actor_system() as system:
            ref = system.spawn(Idle)
            reason = await ref.stop(timeout=0)  # the actor's task has not run yet
            assert reason.kind is ExitKind.KILLED
