from __future__ import annotations

from collections import OrderedDict

import pytest

from actors.chat._oldest_first import pop_least_recently_active


class Entry:
    """A table entry as the run tracker and the delivery tracker keep them: last active, last (re)queued."""

    def __init__(self, name: str, queued_at: int, last_activity: int) -> None:
        self.name = name
        self.queued_at = queued_at
        self.last_activity = last_activity


def table(*entries: Entry) -> OrderedDict[str, Entry]:
    return OrderedDict((entry.name, entry) for entry in entries)


class TestPopLeastRecentlyActive:
    def test_pop_idle_front_entry_is_the_one_removed(self) -> None:
        entries = table(Entry("a", 1, 1), Entry("b", 2, 5))
        assert pop_least_recently_active(entries).name == "a"
        assert list(entries) == ["b"]

    def test_pop_entry_active_since_queued_gets_a_second_chance_at_the_back(self) -> None:
        # "a" was active after it was queued: it moves behind "c", stamped as queued at its activity, and the next
        # idle entry is removed instead.
        a, b, c = Entry("a", 1, 9), Entry("b", 2, 2), Entry("c", 3, 3)
        entries = table(a, b, c)
        assert pop_least_recently_active(entries) is b
        assert list(entries) == ["c", "a"]
        assert a.queued_at == 9

    def test_pop_every_entry_active_the_first_requeued_is_removed_on_the_second_pass(self) -> None:
        entries = table(Entry("a", 1, 4), Entry("b", 2, 5))
        assert pop_least_recently_active(entries).name == "a"
        assert list(entries) == ["b"]

    def test_pop_empty_table_raises_key_error(self) -> None:
        with pytest.raises(KeyError):
            pop_least_recently_active(OrderedDict())
