from __future__ import annotations

import msgspec
import pytest

from actors.chat._events import RunStarted, StampedEvent
from actors.chat._finished_runs import FinishedRuns
from actors.chat._monitor import MonitorConfig, MonitorMemory
from actors.process._chat_monitor import (
    FinishedRunsLog,
    MemorySnapshot,
    MemorySync,
    restore_memory,
    snapshot_of,
)


class TestFinishedRuns:
    def test_add_beyond_capacity_forgets_oldest_and_counts_it(self) -> None:
        finished = FinishedRuns(2)
        for index in range(3):
            finished.add(("t", f"r{index}"), index)
        assert ("t", "r0") not in finished
        assert finished.get(("t", "r2")) == 2
        assert (finished.forgotten, finished.added) == (1, 3)

    def test_add_again_keeps_first_finish_and_does_not_count(self) -> None:
        finished = FinishedRuns(5)
        finished.add(("t", "r"), 10)
        finished.add(("t", "r"), 20)
        assert (finished.get(("t", "r")), finished.added) == (10, 1)

    def test_lookup_taken_before_additions_sees_them_and_the_forgetting(self) -> None:
        # The run tracker binds it once, when it is built, and asks it for every run it starts.
        finished = FinishedRuns(2)
        lookup = finished.lookup
        finished.add(("t", "r0"), 5)
        finished.add(("t", "r1"), 6)
        finished.add(("t", "r2"), 7)  # r0 is forgotten
        assert [lookup(("t", f"r{index}")) for index in range(4)] == [None, 6, 7, None]

    def test_newest_returns_latest_additions_oldest_first(self) -> None:
        finished = FinishedRuns(10)
        for index in range(5):
            finished.add(("t", f"r{index}"), index)
        assert finished.newest(2) == [("t", "r3", 3), ("t", "r4", 4)]
        assert finished.newest(0) == []
        assert finished.newest(9) == finished.entries()

    def test_capacity_not_positive_int_rejected(self) -> None:
        with pytest.raises(ValueError, match="capacity must be a positive int"):
            FinishedRuns(0)


class TestProcessMonitorMemory:
    def test_snapshot_round_trip_keeps_finished_runs_in_the_trackers_table(self) -> None:
        # Regression: a process monitor's memory snapshot did not carry the finished runs, so a worker restarted
        # after a kill took a run whose RUN_FINISHED had left the replay ring for one in flight.
        parent = MonitorMemory(MonitorConfig())
        parent.finished.add(("t1", "r1"), 100)
        parent.finished.add(("t2", "r2"), 200)
        wire = msgspec.msgpack.decode(msgspec.msgpack.encode(snapshot_of(parent)), type=MemorySnapshot)
        worker = MonitorMemory(MonitorConfig())
        table = worker.finished  # what the worker's run tracker holds on to
        restore_memory(worker, wire)
        assert worker.finished is table
        assert table.entries() == [("t1", "r1", 100), ("t2", "r2", 200)]

    def test_snapshot_round_trip_keeps_poisoned_taps(self) -> None:
        # A worker's monitor that failed on a tap records it poisoned; the next worker's rebuild must skip it too.
        parent = MonitorMemory(MonitorConfig())
        tap = StampedEvent(
            thread_id="t1", run_id="r1", seq=7, observed_at=1, event=RunStarted(thread_id="t1", run_id="r1"), frame=b""
        )
        parent.poison(tap)
        wire = msgspec.msgpack.decode(msgspec.msgpack.encode(snapshot_of(parent)), type=MemorySnapshot)
        worker = MonitorMemory(MonitorConfig())
        restore_memory(worker, wire)
        assert (list(worker.poisoned), worker.poisoned_total) == ([("t1", 7)], 1)
        assert ("t1", 7) in worker.poisoned

    def test_poisoned_taps_bounded_oldest_forgotten_all_counted(self) -> None:
        memory = MonitorMemory(MonitorConfig())
        for seq in range(1, 71):
            event = RunStarted(thread_id="t", run_id="r")
            memory.poison(StampedEvent(thread_id="t", run_id="r", seq=seq, observed_at=1, event=event, frame=b""))
        assert (len(memory.poisoned), memory.poisoned_total) == (64, 70)
        assert ("t", 6) not in memory.poisoned
        assert ("t", 7) in memory.poisoned

    def test_memory_sync_without_finished_field_decodes_to_empty(self) -> None:
        sync = MemorySync(
            last_tapped=None,
            components=[],
            audits={},
            mismatch_since={},
            claims={},
            direct=[],
            suppressed=0,
            rebuilt_events=0,
        )
        assert sync.finished == []


def _runs(first: int, count: int) -> list[tuple[str, str, int]]:
    return [(f"t{index % 3}", f"r{index}", 1000 + index) for index in range(first, first + count)]


def _round_trip(snapshot: MemorySnapshot) -> MemorySnapshot:
    return msgspec.msgpack.decode(msgspec.msgpack.encode(snapshot), type=MemorySnapshot)


class TestFinishedRunsLog:
    def test_append_past_capacity_drops_whole_oldest_chunks_keeps_at_least_capacity(self) -> None:
        log = FinishedRunsLog(3)
        for first in (0, 2, 4):
            log.append(_runs(first, 2))
        # 6 runs in 3 chunks: the oldest chunk goes (4 left >= 3), the next must stay (2 left < 3).
        assert len(log) == 4
        assert len(log.chunks()) == 2

    def test_append_empty_adds_no_chunk(self) -> None:
        log = FinishedRunsLog(3)
        log.append([])
        assert (len(log), log.chunks()) == (0, [])

    def test_snapshot_from_log_restores_the_keepers_table_with_its_evictions(self) -> None:
        # The keeper applies each sync to its table and to its log; the worker rebuilt from the log's chunks must
        # hold exactly the table: the same runs, in the same order, the oldest beyond capacity forgotten.
        config = MonitorConfig(finished_runs=5)
        keeper = MonitorMemory(config)
        log = FinishedRunsLog.of(keeper.finished)
        for first in (0, 3, 6):
            sync = _runs(first, 3)
            for thread_id, run_id, finished_at in sync:
                keeper.finished.add((thread_id, run_id), finished_at)
            log.append(sync)
        worker = MonitorMemory(config)
        restore_memory(worker, _round_trip(snapshot_of(keeper, log)))
        assert worker.finished.entries() == keeper.finished.entries() == _runs(4, 5)
        assert worker.finished.forgotten == 0

    def test_log_of_table_holds_its_runs_in_order(self) -> None:
        table = FinishedRuns(10_000)
        for thread_id, run_id, finished_at in _runs(0, 5000):
            table.add((thread_id, run_id), finished_at)
        log = FinishedRunsLog.of(table)
        decoded = [entry for chunk in log.chunks() for entry in msgspec.msgpack.decode(chunk)]
        assert len(log) == 5000
        assert [tuple(entry) for entry in decoded] == table.entries()

    def test_capacity_not_positive_int_rejected(self) -> None:
        with pytest.raises(ValueError, match="FinishedRunsLog capacity must be a positive int"):
            FinishedRunsLog(0)
