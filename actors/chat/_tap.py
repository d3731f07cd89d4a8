from __future__ import annotations

from actors import Message


class DeliveryProgress(Message, frozen=True, kw_only=True):
    """Told by the bridge to the monitor on every tick: how far delivery has got, per thread.

    :param confirmed: per thread, the highest seq that reached every connection subscribed to the thread
    :param unsubscribed: threads whose last connection left since the previous report (what they had not yet
        received is not "undelivered": a reconnecting client gets it from the replay ring)
    """

    confirmed: dict[str, int]
    unsubscribed: tuple[str, ...] = ()


class ReplaySnapshot(Message, frozen=True, kw_only=True):
    """Asked of the bridge by a (re)starting monitor: the reply is every event held in the replay rings.

    The reply is a ``list[StampedEvent]`` (the very objects the rings hold; nothing is copied).
    """
