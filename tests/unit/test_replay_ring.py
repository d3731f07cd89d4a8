from __future__ import annotations

import math
import pickle

import pytest
from hypothesis import given, settings, strategies as st

from actors.chat._events import StampedEvent, ToolCallArgs
from actors.chat._replay_ring import ReplayGap, ReplayRing, RingEvictions

_EVENT = ToolCallArgs(tool_call_id="c", delta="x")


def item(seq: int, observed_at: int = 0) -> StampedEvent:
    return StampedEvent(thread_id="t", run_id="r", seq=seq, observed_at=observed_at, event=_EVENT, frame=b"{}")


def seqs(items: list[StampedEvent]) -> list[int]:
    return [i.seq for i in items]


def filled(capacity: int, count: int, max_age: float = math.inf) -> ReplayRing:
    ring = ReplayRing(capacity, max_age)
    for seq in range(1, count + 1):
        ring.append(item(seq))
    return ring


class TestConstruction:
    @pytest.mark.parametrize("capacity", [0, -1])
    def test_capacity_below_one_is_rejected(self, capacity: int) -> None:
        with pytest.raises(ValueError, match="capacity must be at least 1"):
            ReplayRing(capacity, 1.0)

    @pytest.mark.parametrize("max_age", [0.0, -1.0, math.nan])
    def test_non_positive_max_age_is_rejected(self, max_age: float) -> None:
        with pytest.raises(ValueError, match="max_age must be a positive number"):
            ReplayRing(4, max_age)

    def test_new_ring_is_empty(self) -> None:
        ring = ReplayRing(4, math.inf)
        assert (len(ring), ring.last_seq, ring.capacity, ring.max_age) == (0, 0, 4, math.inf)
        assert ring.since(0, now_ms=0) == []
        assert ring.snapshot() == []


class TestAppend:
    def test_seq_must_strictly_increase(self) -> None:
        ring = filled(4, 3)
        with pytest.raises(ValueError, match="seq must increase: got 3 after 3"):
            ring.append(item(3))
        with pytest.raises(ValueError, match="got 1 after 3"):
            ring.append(item(1))
        assert seqs(ring.snapshot()) == [1, 2, 3]

    def test_full_ring_evicts_the_oldest(self) -> None:
        ring = filled(3, 5)
        assert seqs(ring.snapshot()) == [3, 4, 5]
        assert (len(ring), ring.last_seq, ring.evicted_through) == (3, 5, 2)
        assert ring.statistics().evicted_by_count == 2

    def test_append_expires_events_older_than_max_age_by_the_new_event_clock(self) -> None:
        ring = ReplayRing(10, max_age=1.0)
        ring.append(item(1, observed_at=0))
        ring.append(item(2, observed_at=600))
        ring.append(item(3, observed_at=1_600))
        assert seqs(ring.snapshot()) == [2, 3]
        assert ring.statistics().evicted_by_age == 1

    def test_max_age_of_a_fraction_of_a_ms_is_compared_exactly(self) -> None:
        # Regression guard: a whole number of ms is compared as an int, any other max_age as the exact float.
        ring = ReplayRing(10, max_age=0.0015)
        ring.append(item(1, observed_at=0))
        ring.append(item(2, observed_at=1))
        assert seqs(ring.snapshot()) == [1, 2]
        ring.append(item(3, observed_at=2))
        assert seqs(ring.snapshot()) == [2, 3]
        assert ring.max_age == 0.0015

    def test_whole_ms_max_age_reads_back_as_given(self) -> None:
        ring = ReplayRing(3, max_age=0.7)
        ring.append(item(1, observed_at=0))
        ring.append(item(2, observed_at=700))
        assert seqs(ring.snapshot()) == [1, 2]
        ring.append(item(3, observed_at=701))
        assert seqs(ring.snapshot()) == [2, 3]
        assert (ring.max_age, ring.capacity) == (0.7, 3)

    def test_an_aged_out_full_ring_counts_age_evictions_before_count_evictions(self) -> None:
        ring = ReplayRing(2, max_age=1.0)
        ring.append(item(1, observed_at=0))
        ring.append(item(2, observed_at=500))
        ring.append(item(3, observed_at=1_200))
        stats = ring.statistics()
        assert (stats.evicted_by_age, stats.evicted_by_count) == (1, 0)
        assert (seqs(ring.snapshot()), ring.evicted_through) == ([2, 3], 1)


class TestSince:
    def test_returns_the_missing_suffix_in_order(self) -> None:
        ring = filled(10, 6)
        assert seqs(ring.since(3, now_ms=0)) == [4, 5, 6]
        assert seqs(ring.since(0, now_ms=0)) == [1, 2, 3, 4, 5, 6]

    def test_after_the_last_seq_is_empty(self) -> None:
        assert filled(10, 6).since(6, now_ms=0) == []

    def test_ahead_of_the_last_seq_is_a_value_error_not_a_gap(self) -> None:
        with pytest.raises(ValueError, match="between 0 and the last seq 6, got 7"):
            filled(10, 6).since(7, now_ms=0)

    def test_negative_after_seq_is_a_value_error(self) -> None:
        with pytest.raises(ValueError, match="got -1"):
            filled(10, 6).since(-1, now_ms=0)

    def test_needing_an_event_evicted_by_count_raises_gap(self) -> None:
        ring = filled(3, 5)
        with pytest.raises(ReplayGap) as info:
            ring.since(1, now_ms=0)
        assert (info.value.after_seq, info.value.oldest_available) == (1, 3)

    def test_after_seq_at_the_eviction_boundary_is_complete(self) -> None:
        ring = filled(3, 5)
        assert seqs(ring.since(2, now_ms=0)) == [3, 4, 5]

    def test_needing_an_event_evicted_by_age_raises_gap(self) -> None:
        ring = ReplayRing(10, max_age=1.0)
        ring.append(item(1, observed_at=0))
        ring.append(item(2, observed_at=900))
        with pytest.raises(ReplayGap) as info:
            ring.since(0, now_ms=1_500)
        assert info.value.oldest_available == 2
        assert seqs(ring.since(1, now_ms=1_500)) == [2]

    def test_event_exactly_max_age_old_is_still_replayable(self) -> None:
        ring = ReplayRing(10, max_age=1.0)
        ring.append(item(1, observed_at=0))
        assert seqs(ring.since(0, now_ms=1_000)) == [1]
        with pytest.raises(ReplayGap):
            ring.since(0, now_ms=1_001)

    def test_everything_aged_out_reports_nothing_available(self) -> None:
        ring = ReplayRing(10, max_age=0.5)
        ring.append(item(1, observed_at=0))
        with pytest.raises(ReplayGap) as info:
            ring.since(0, now_ms=10_000)
        assert info.value.oldest_available is None
        assert len(ring) == 0
        # A client that saw everything still gets a clean, empty replay.
        assert ring.since(1, now_ms=10_000) == []

    def test_gaps_in_the_numbering_are_not_replay_gaps(self) -> None:
        ring = ReplayRing(2, math.inf)
        for seq in (2, 5, 9, 14):
            ring.append(item(seq))
        assert seqs(ring.since(6, now_ms=0)) == [9, 14]
        assert seqs(ring.since(5, now_ms=0)) == [9, 14]
        with pytest.raises(ReplayGap):
            ring.since(4, now_ms=0)


class TestSnapshotAndStatistics:
    def test_snapshot_with_clock_expires_first(self) -> None:
        ring = ReplayRing(10, max_age=1.0)
        ring.append(item(1, observed_at=0))
        ring.append(item(2, observed_at=900))
        assert seqs(ring.snapshot()) == [1, 2]
        assert seqs(ring.snapshot(now_ms=1_500)) == [2]

    def test_snapshot_is_a_copy(self) -> None:
        ring = filled(4, 2)
        snapshot = ring.snapshot()
        ring.append(item(3))
        assert seqs(snapshot) == [1, 2]

    def test_statistics_count_retained_and_evicted(self) -> None:
        ring = ReplayRing(2, max_age=1.0)
        ring.append(item(1, observed_at=0))
        ring.append(item(2, observed_at=0))
        ring.append(item(3, observed_at=0))
        ring.append(item(4, observed_at=5_000))
        stats = ring.statistics()
        assert (stats.retained, stats.last_seq, stats.oldest_seq) == (1, 4, 4)
        assert (stats.evicted_by_count, stats.evicted_by_age) == (1, 2)


class TestRingEvictions:
    def test_rings_sharing_a_counter_add_up_their_evictions_by_count_and_by_age(self) -> None:
        # The bridge reads its rings' evictions off one shared counter instead of visiting every ring.
        shared = RingEvictions()
        by_count = ReplayRing(3, math.inf, evictions=shared)
        by_age = ReplayRing(100, 0.01, evictions=shared)  # 10 ms
        for seq in range(1, 8):
            by_count.append(item(seq))  # 4 evicted by count
        for seq in range(1, 6):
            by_age.append(item(seq, observed_at=seq))
        by_age.append(item(6, observed_at=14))  # seqs 1-3 are older than 10 ms at 14
        assert by_age.snapshot(now_ms=15) == [item(5, 5), item(6, 14)]  # seq 4 too at 15
        assert (shared.by_count, shared.by_age) == (4, 4)
        assert shared.by_count == by_count.statistics().evicted_by_count
        assert shared.by_age == by_age.statistics().evicted_by_age

    def test_ring_without_a_shared_counter_counts_on_its_own(self) -> None:
        ring = filled(2, 5)
        assert ring.statistics().evicted_by_count == 3


class TestReplayGap:
    def test_gap_is_a_lookup_error_not_a_value_error(self) -> None:
        gap = ReplayGap(3, 10)
        assert isinstance(gap, LookupError)
        assert not isinstance(gap, ValueError)
        assert str(gap) == "events after seq 3 are no longer available (replay ring holds from seq 10)"

    def test_gap_pickles_with_its_attributes(self) -> None:
        copy = pickle.loads(pickle.dumps(ReplayGap(3, None)))
        assert (copy.after_seq, copy.oldest_available) == (3, None)
        assert "holds nothing" in str(copy)


# A run of operations: ("append", seq step, clock step) or ("since", after_seq fraction, clock step).
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 3), st.integers(0, 400)),
        st.tuples(st.just("since"), st.floats(0, 1), st.integers(0, 400)),
    ),
    max_size=60,
)


class TestReplayProperty:
    @settings(max_examples=400, deadline=None)
    @given(ops=_ops, capacity=st.integers(1, 8), max_age_ms=st.integers(1, 1_500))
    def test_replay_is_the_exact_missing_suffix_or_a_gap_exactly_when_needed_data_was_evicted(
        self, ops: list[tuple[str, float, int]], capacity: int, max_age_ms: int
    ) -> None:
        ring = ReplayRing(capacity, max_age_ms / 1000)
        appended: list[StampedEvent] = []
        clock = 0  # one monotonic clock for observed_at and now_ms, as in the runtime
        for op, arg, tick in ops:
            clock += tick
            if op == "append":
                appended.append(item((appended[-1].seq if appended else 0) + int(arg), observed_at=clock))
                ring.append(appended[-1])
                continue
            after_seq = int(arg * ring.last_seq)
            # Model: an event is gone iff `capacity` newer events were appended after it, or it is older than
            # max_age on the latest clock reading (eviction is lazy, but the clock only moves forward).
            retained = {x.seq for x in appended[-capacity:] if x.observed_at >= clock - max_age_ms}
            needed = [x for x in appended if x.seq > after_seq]
            if all(x.seq in retained for x in needed):
                assert ring.since(after_seq, now_ms=clock) == needed
            else:
                with pytest.raises(ReplayGap) as info:
                    ring.since(after_seq, now_ms=clock)
                assert info.value.oldest_available == (min(retained) if retained else None)
            assert seqs(ring.snapshot()) == sorted(retained)

    @settings(max_examples=300, deadline=None)
    @given(
        steps=st.lists(st.tuples(st.integers(1, 3), st.integers(0, 3_000)), max_size=40),
        queries=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 3_000)), min_size=1, max_size=5),
        capacity=st.integers(1, 8),
    )
    def test_with_an_unordered_clock_a_replay_is_never_silently_incomplete(
        self, steps: list[tuple[int, int]], queries: list[tuple[float, int]], capacity: int
    ) -> None:
        ring = ReplayRing(capacity, max_age=1.0)
        appended: list[StampedEvent] = []
        for step, observed_at in steps:
            appended.append(item((appended[-1].seq if appended else 0) + step, observed_at=observed_at))
            ring.append(appended[-1])
        for fraction, now_ms in queries:
            after_seq = int(fraction * ring.last_seq)
            try:
                replay = ring.since(after_seq, now_ms=now_ms)
            except ReplayGap:
                continue
            assert replay == [x for x in appended if x.seq > after_seq]
