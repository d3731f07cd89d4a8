from __future__ import annotations

import msgspec
import pytest

from actors.chat._finished_runs import FinishedRuns
from actors.chat._monitor import MonitorConfig, MonitorMemory
from actors.process._chat_monitor import MemorySnapshot, MemorySync, restore_memory, snapshot_of


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
