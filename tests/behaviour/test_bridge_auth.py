from __future__ import annotations

import random
from collections import defaultdict

import anyio
import anyio.lowlevel
import pytest

from actors.chat._bridge_messages import BridgeConfig, SubscribeOutcome
from actors.chat._connection import MemorySink
from actors.chat._events import TextMessageContent
from tests.behaviour.test_bridge_support import (
    assert_connection_conserved,
    covered_seqs,
    frames,
    meta,
    open_bridge,
    settled,
    until,
)

pytestmark = pytest.mark.anyio


def members_only(members: dict[str, set[str]]) -> BridgeConfig:
    """A bridge whose authorisation hook admits a principal only to the threads listed for it."""

    def authorize(principal: str, thread_id: str) -> bool:
        return thread_id in members.get(principal, set())

    return BridgeConfig(authorize=authorize, closed_connections_kept=2_000)


class TestAuthorisation:
    async def test_refused_subscribe_closes_1008_and_delivers_nothing(self) -> None:
        async with open_bridge(members_only({"alice": {"t1"}})) as (_, bridge):
            sink = MemorySink()
            cid = await bridge.connect(sink, principal="mallory")
            result = await bridge.subscribe(cid, "t1")
            assert (result.outcome, result.close_code) == (SubscribeOutcome.REFUSED, 1008)
            bridge.publish("t1", "r", TextMessageContent(message_id="m", delta="secret"))
            await until(lambda: sink.closed)
            assert sink.close_code == 1008
            assert sink.close_reason == "not authorised for thread 't1'"
            await anyio.sleep(0.01)
            assert sink.frames == []
            # Later subscribes on the closed connection are refused as unknown, and deliver nothing either.
            late = await bridge.subscribe(cid, "t1", after_seq=0)
            assert late.outcome is SubscribeOutcome.UNKNOWN_CONNECTION
            assert (await bridge.get_metrics()).subscriptions_refused == 1

    @pytest.mark.parametrize(
        "verdict",
        [pytest.param(lambda p, t: 1 / 0, id="raises"), pytest.param(lambda p, t: "yes", id="truthy-not-bool")],
    )
    async def test_authorize_hook_raising_or_not_bool_refuses(self, verdict: object) -> None:
        async with open_bridge(BridgeConfig(authorize=verdict)) as (_, bridge):  # type: ignore[arg-type]
            sink = MemorySink()
            result = await bridge.subscribe(await bridge.connect(sink, principal="p"), "t")
            assert result.outcome is SubscribeOutcome.REFUSED
            await until(lambda: sink.closed)
            assert sink.close_code == 1008

    async def test_hook_returning_coroutine_refuses_instead_of_admitting(self) -> None:
        # A coroutine object is truthy: only a real True may admit anyone (and the coroutine is closed, not leaked).
        async def decide(principal: str, thread_id: str) -> bool:
            return True

        async with open_bridge(BridgeConfig(authorize=lambda p, t: decide(p, t))) as (_, bridge):  # type: ignore[arg-type,return-value]
            result = await bridge.subscribe(await bridge.connect(MemorySink(), principal="p"), "t")
            assert result.outcome is SubscribeOutcome.REFUSED

    def test_async_authorize_hook_rejected_by_config(self) -> None:
        async def authorize(principal: str, thread_id: str) -> bool:
            return True

        with pytest.raises(TypeError, match=r"BridgeConfig\.authorize must be a plain"):
            BridgeConfig(authorize=authorize)  # type: ignore[arg-type]

    async def test_thousand_connections_random_subscriptions_zero_cross_thread_deliveries(self) -> None:
        rng = random.Random(20250901)
        threads = [f"thread-{n}" for n in range(50)]
        principals = [f"user-{n}" for n in range(200)]
        members = {p: set(rng.sample(threads, rng.randint(1, 8))) for p in principals}
        async with open_bridge(members_only(members)) as (_, bridge):
            wanted: dict[str, set[str]] = {}
            sinks: dict[str, MemorySink] = {}
            refused: set[str] = set()
            for _ in range(1_000):
                principal = rng.choice(principals)
                sink = MemorySink()
                cid = await bridge.connect(sink, principal=principal)
                sinks[cid] = sink
                wanted[cid] = set()
                # Mostly threads it may join, sometimes one it may not.
                for thread in rng.sample(threads, rng.randint(1, 4)):
                    if thread not in members[principal] and rng.random() < 0.8:
                        continue
                    result = await bridge.subscribe(cid, thread)
                    if result.outcome is SubscribeOutcome.REFUSED:
                        assert thread not in members[principal]
                        refused.add(cid)
                        break
                    assert result.outcome is SubscribeOutcome.SUBSCRIBED
                    assert thread in members[principal]
                    wanted[cid].add(thread)
            assert 0 < len(refused) < 1_000
            published: dict[str, int] = defaultdict(int)
            for i in range(5_000):
                thread = rng.choice(threads)
                published[thread] += 1
                bridge.publish(thread, "r", TextMessageContent(message_id=f"{thread}-m", delta=f"{thread}:{i};"))
                if i % 500 == 0:
                    await anyio.lowlevel.checkpoint()
            await until(lambda: all(s.closed for cid, s in sinks.items() if cid in refused))
            await settled(bridge, timeout=60)
            cross = 0
            for cid, sink in sinks.items():
                if cid in refused:
                    # Closed at the refusal, before any publish: it never received anything at all.
                    assert sink.close_code == 1008
                    assert sink.frames == []
                    continue
                got = frames(sink)
                cross += sum(meta(e)["threadId"] not in wanted[cid] for e in got)
                for thread in wanted[cid]:
                    # Exactly this thread's events, each once, in order (coalesced frames expanded).
                    assert covered_seqs(sink, thread) == list(range(1, published[thread] + 1))
                    deltas = "".join(
                        e.delta for e in got if isinstance(e, TextMessageContent) and meta(e)["threadId"] == thread
                    )
                    assert deltas.count(";") == published[thread]
                    assert all(part.startswith(f"{thread}:") for part in deltas.split(";")[:-1])
            assert cross == 0
            for stats in await bridge.connection_statistics():
                assert_connection_conserved(stats)
            metrics = await bridge.get_metrics()
            assert metrics.subscriptions_refused == len(refused)
            assert metrics.connections_closed == {"1008": len(refused)}
            assert metrics.fan_out_total == sum(
                published[thread] for cid in wanted if cid not in refused for thread in wanted[cid]
            )
