from __future__ import annotations

import random
from collections import Counter

import anyio
import pytest

from actors.chat._bridge_messages import Publish
from actors.chat._events import InvalidEvent, encode_event, parse_event
from supervisors import SupervisorEventKind
from supervisors._replay import InvalidTraceLine, TraceReplay
from supervisors.app import MONITOR
from supervisors.faults import (
    FaultHistory,
    check_bridge_accounting,
    check_delivery,
    malformed_frames,
    record_supervision,
)
from supervisors.faults._plan import MUTATION_KINDS
from tests.conftest import virtual_time
from tests.faults._harness import Workload, all_received, fast_config, logs, report, runtime_with_clients, scaled

pytestmark = pytest.mark.anyio

# Figure 8: fuzzed frames and trace lines, interleaved with a valid stream, through the validation boundary
# (parse_event, a replay of the lines) and the bridge. Each bad one is rejected with an error that names the field
# or says what is wrong with the frame, and counted; no actor restarts; no valid event is lost.
SEED = 8
MALFORMED = scaled(2_000)
NAMED = {"wrong_type", "missing_field", "unknown_type"}  # mutations that break one field: the error names it


class TestMalformedInput:
    @virtual_time
    async def test_fuzzed_frames_each_rejected_with_clear_error_counted_nothing_restarts_no_valid_event_lost(
        self,
    ) -> None:
        rng = random.Random(SEED)
        workload = Workload(SEED, threads=5, events_per_thread=100)
        bad = iter(malformed_frames(SEED, MALFORMED))
        valid = iter(workload.plan)
        # One stream: the valid events, in order, at random places among the bad frames.
        stream = ["bad"] * MALFORMED + ["valid"] * len(workload.plan)
        rng.shuffle(stream)
        history = FaultHistory()
        rejected: Counter[str] = Counter()
        unclear: list[str] = []
        replay = TraceReplay()
        bogus_publishes = 0
        async with runtime_with_clients(fast_config(), workload.threads, per_thread=2, history=history) as (
            runtime,
            clients,
        ):
            record_supervision(runtime.system, runtime.events, history)
            for position, item in enumerate(stream):
                if item == "valid":
                    thread_id, run_id, event = next(valid)
                    workload.publish(runtime, thread_id, run_id, parse_event(encode_event(event)))
                else:
                    mutation = next(bad)
                    with pytest.raises(InvalidEvent) as caught:
                        parse_event(mutation.frame)
                    error = caught.value
                    clear = bool(error.rule) and (error.field is None or error.field.startswith("$"))
                    if mutation.kind in NAMED:
                        clear = clear and error.field == mutation.field
                    if not clear:
                        unclear.append(f"{mutation.kind}: {error!s} for {mutation.frame[:80]!r}")
                    rejected[mutation.kind] += 1
                    with pytest.raises(InvalidTraceLine):
                        replay.feed(mutation.frame)
                    if rejected.total() % 10 == 0:
                        # What a buggy producer hands the bridge: no event at all. Rejected and counted, never fatal.
                        runtime.bridge.ref.tell(Publish(thread_id="t0", run_id="r", event=mutation.frame))  # type: ignore[arg-type]
                        bogus_publishes += 1
                if position % 50 == 0:
                    await anyio.sleep(0.01)
            await all_received(clients, workload)
            metrics = await runtime.bridge.get_metrics()
            bridge_restarts = runtime.bridge.ref.statistics().restarts
            monitor_restarts = runtime.system.lookup(MONITOR).statistics().restarts
            failures = [e for e in runtime.events.history() if e.kind is SupervisorEventKind.FAILED]
        assert unclear == []
        assert sum(rejected.values()) == MALFORMED
        assert set(rejected) == set(MUTATION_KINDS)
        assert replay.statistics().invalid == MALFORMED
        assert metrics.dropped.get("invalid_event", 0) == bogus_publishes
        assert metrics.events_accepted == len(workload.plan)
        check_bridge_accounting(metrics).raise_for_problems()
        assert (bridge_restarts, monitor_restarts, failures) == (0, 0, [])
        check_delivery(logs(clients), last_seqs=workload.last_seqs()).raise_for_problems()
        report(
            "fig8",
            malformed=sum(rejected.values()),
            by_kind=dict(rejected),
            bogus_publishes=bogus_publishes,
            valid=metrics.events_accepted,
            restarts=bridge_restarts + monitor_restarts,
        )
