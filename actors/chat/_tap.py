from __future__ import annotations

from actors import Message


class DeliveryProgress(Message, frozen=True, kw_only=True):
    """Told by the bridge to the monitor on every tick: how far delivery has got, per thread.

    :param confirmed: per thread, the highest seq that reached every connection subscribed to the thread
    :param unsubscribed: threads whose last connection left since the previous report (what they had not yet
        received is not "undelivered": a reconnecting client gets it from the replay ring)
    :param at: the bridge's clock (ms) when it made the report: the monitor judges delivery deadlines as of then,
        not as of when it got round to the report; None (a hand-made report) means "when received"
    :param delivered: events whose frame was sent to a client since the previous report, summed over the
        connections (a coalesced frame counts every event it carries); None (a hand-made report) means "not
        known": the monitor then counts how far the confirmations moved
    :param resync: the full re-report a (re)starting monitor gets with its replay snapshot: these confirmations
        are not news as of ``at`` (the deliveries may have happened any time before, some while no monitor was
        attached), so the monitor applies them before it judges delivery deadlines
    """

    confirmed: dict[str, int]
    unsubscribed: tuple[str, ...] = ()
    at: int | None = None
    delivered: int | None = None
    resync: bool = False


class ReplaySnapshot(Message, frozen=True, kw_only=True):
    """Asked of the bridge by a (re)starting monitor: the reply is every event held in the replay rings.

    The reply is a ``list[StampedEvent]`` (the very objects the rings hold; nothing is copied).
    """
