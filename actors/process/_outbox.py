from __future__ import annotations

from itertools import groupby, islice, repeat, starmap
from typing import TYPE_CHECKING, Any, Final

import msgspec

from actors._mailbox import BATCH_SIZE

from . import _wire as wire
from ._tell_runs import pack_run, packers

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from actors._mailbox import Mailbox

    from ._recipe import MessageSchema

#: Messages written in one frame at most (a frame may exceed it by the last run it takes, itself at most
#: ``RUN_LIMIT``). The backlog told while a worker restarts (thousands of taps) goes in frames of about this many,
#: one yield between two, instead of one frame that held the loop for 0.7 ms: 512 taps take about 0.06 ms to pack
#: and encode.
FRAME_MESSAGES: Final = 512
#: Messages in one run at most: a tell of the same type as the run at the outbox's end joins it below this.
RUN_LIMIT: Final = FRAME_MESSAGES
#: Entries that carry messages of the actor (lost, and counted, if the worker goes first).
_MESSAGES: Final = (wire.TELL_RUN, wire.ASK)
_ENCODE_ERRORS: Final = (TypeError, msgspec.EncodeError, ValueError, OverflowError)

Entry = tuple[Any, ...]
"""An outbox entry: a run of tells ``(TELL_RUN, code, [messages])``, or any other item laid out as its wire item."""


class WorkerOutbox:
    """What a process host has yet to write to its worker, counted in messages (what ``outbox_limit`` bounds).

    Tells are kept in runs of one type: a run is one entry, which later tells of its type join, and crosses as one
    wire item (in its type's :class:`WireForm` when the schema declares one). Plain logic, no I/O: the host takes
    frames out of it and writes them.

    :param schema: the actor's schema (its wire forms)
    :param encoder: the host's MessagePack encoder (its hooks encode refs)
    :param unencodable: what the host does with an item that does not encode (dead-letters a tell, fails an ask,
        turns an answer into a failure): returns the item to send instead, or None
    """

    __slots__ = ("_encoder", "_packers", "_unencodable", "entries", "size")

    def __init__(
        self,
        schema: MessageSchema,
        encoder: msgspec.msgpack.Encoder,
        unencodable: Callable[[Entry, Exception], Entry | None],
    ) -> None:
        self._encoder = encoder
        self._packers = packers(schema)
        self._unencodable = unencodable
        #: The entries, oldest first.
        self.entries: list[Entry] = []
        #: Messages in :attr:`entries` (a run counts its messages).
        self.size = 0

    @staticmethod
    def messages_in(entries: list[Entry]) -> int:
        """How many of the actor's messages ``entries`` carry (control items, answers and heartbeats do not count)."""
        return sum(len(entry[2]) if entry[0] == wire.TELL_RUN else 1 for entry in entries if entry[0] in _MESSAGES)

    def put(self, item: Entry) -> None:
        """Add one item laid out as its wire item (an ask, an answer, a fault, a stop)."""
        self.entries.append(item)
        self.size += 1

    def take_tells(
        self, code: int, message: Any, mailbox: Mailbox, accept_codes: Mapping[type, int], replies: Mapping[type, Any]
    ) -> int:
        """Put a told message in the outbox, with the plain tells waiting behind it in ``mailbox``; return how many.

        The drain loop would hand those to the host one call each; taken here, up to the drain loop's own batch size
        and stopping at the first message that needs more than a tell (an ask, a timer, a control message, a type
        outside the schema), the parent's loop pays almost nothing per tapped event: the types queued are read in
        one C call, and each run of one type is moved out of the mailbox in another, so Python code runs once per
        run, not per message. The mailbox's order and counters are kept.
        """
        run = self._run_for(code)
        run.append(message)
        queue = mailbox.queue
        popleft = queue.popleft
        taken = 0
        for kind, same in groupby(list(map(type, islice(queue, BATCH_SIZE)))):
            next_code = accept_codes.get(kind)
            if next_code is None or kind in replies:
                break  # an AskRequest, a TimerFire, a control message or a type outside the schema: not ours
            count = len(list(same))
            taken += count
            while count:
                if next_code != code or len(run) >= RUN_LIMIT:
                    code = next_code
                    run = self._run_for(code)
                part = min(count, RUN_LIMIT - len(run))
                run.extend(starmap(popleft, repeat((), part)))
                count -= part
        self.size += 1 + taken
        if taken:
            mailbox.processed += taken
            if mailbox.space_waiters:
                mailbox.wake_senders()
        return 1 + taken

    def _run_for(self, code: int) -> list[Any]:
        """The run that a tell of wire code ``code`` joins: the last entry if it is such a run with room."""
        entries = self.entries
        if entries:
            last = entries[-1]
            if last[0] == wire.TELL_RUN and last[1] == code and len(last[2]) < RUN_LIMIT:
                run: list[Any] = last[2]
                return run
        run = []
        entries.append((wire.TELL_RUN, code, run))
        return run

    def take_frame(self) -> list[Entry]:
        """Take the first entries, about ``FRAME_MESSAGES`` messages (all of them if that is fewer)."""
        entries = self.entries
        if self.size <= FRAME_MESSAGES:
            self.entries, self.size = [], 0
            return entries
        size = 0
        end = 0
        while size < FRAME_MESSAGES:
            entry = entries[end]
            size += len(entry[2]) if entry[0] == wire.TELL_RUN else 1
            end += 1
        self.entries, self.size = entries[end:], self.size - size
        return entries[:end]

    def take_all(self) -> list[Entry]:
        """Empty the outbox (the worker is gone) and return what it held."""
        entries, self.entries, self.size = self.entries, [], 0
        return entries

    def encode(self, entries: list[Entry]) -> bytes:
        """One frame of ``entries``: each run of tells as the list of its messages' wire forms.

        An item that does not encode is handed to ``unencodable``; in a run, only its messages that do not encode
        are, and the rest of the run still goes.
        """
        run_op = wire.TELL_RUN
        codes = self._packers
        items = [
            (run_op, entry[1], pack_run(codes[entry[1]], entry[2])) if entry[0] == run_op else entry
            for entry in entries
        ]
        encoder = self._encoder
        try:
            return wire.frame(items, encoder)
        except _ENCODE_ERRORS:
            pass
        # The slow path: find the culprits one by one (in a run, message by message) and frame what does encode.
        encoded: list[msgspec.Raw] = []
        for entry, item in zip(entries, items, strict=True):
            try:
                encoded.append(msgspec.Raw(encoder.encode(item)))
                continue
            except _ENCODE_ERRORS as exc:
                error = exc
            replacement = self._encodable_run(entry) if entry[0] == run_op else self._unencodable(entry, error)
            if replacement is not None:
                encoded.append(msgspec.Raw(encoder.encode(replacement)))
        return wire.frame(encoded, encoder)

    def _encodable_run(self, entry: Entry) -> Entry | None:
        """The wire item of a run without its messages that do not encode (each one handed to ``unencodable``)."""
        _, code, messages = entry
        packer = self._packers[code]
        kept: list[Any] = []
        for message in messages:
            try:
                self._encoder.encode(pack_run(packer, [message]))
            except _ENCODE_ERRORS as exc:
                self._unencodable((wire.TELL, code, message), exc)
                continue
            kept.append(message)
        # Packed once, as a whole: a WireForm's run is its columns, which one message's packing cannot be extended by.
        return (wire.TELL_RUN, code, pack_run(packer, kept)) if kept else None
