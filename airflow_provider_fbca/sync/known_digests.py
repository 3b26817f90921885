"""SQLite's diff in the warehouse: the source digests the state knows, held in memory (see
:meth:`.pushdown.PushdownModel.diff`; importable from :mod:`.pushdown` as before)."""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator, Sequence

from airflow_provider_fbca.sync.dialects import BLAKE2B_8

#: SQLite: the slots of the known digests' table per digest (see :class:`KnownDigests`): 18 bytes a known
#: row (18 MB at a million, while the diff runs). Half full, a probe for a digest the table holds reads 1.5
#: slots on average, for another one (a new or changed row; the last digests added) 2.5; with 1.3 slots
#: (10 bytes a row) 2.8 and 10: Python's loops of the load and of the diff's lookups took a tenth more CPU.
SLOTS_PER_DIGEST = 2.0


class KnownDigests:
    """SQLite: the source digests the state knows, in an open-addressing hash table held in memory: an
    array of signed 64-bit digests, :data:`SLOTS_PER_DIGEST` slots a digest (18 bytes a known row), and a
    mark byte per slot: 0 unmet, 1 met once, 2 met twice or more (two model rows share a known row's
    cells: a duplicate EXTERN_ID), 3 an empty slot.

    The diff's statement computes each model row's digest through :meth:`fresh`, which marks a known
    digest and answers NULL for it: an unchanged row is neither looked up by SQL nor written. It replaces
    a temporary table of the known digests, whose index SQL probed per model row, and a registered
    function marking the ordinals met: 40% of the diff's CPU.

    :param capacity: how many digests the table will hold at most (more: it grows).
    """

    EMPTY = 3

    def __init__(self, capacity: int) -> None:
        self.size = int(max(capacity, 1) * SLOTS_PER_DIGEST) + 1
        self.slots = array("q", [0]) * self.size  # no transient copy (bytes of the size, then the array)
        self.marks = bytearray([self.EMPTY]) * self.size
        self.count = 0
        #: Model rows met after the first with the same known digest (see :attr:`rows`).
        self.met_again = 0
        #: Rows given without a digest (known by none), and digests given again (see :attr:`unmet_rows`).
        self.unknown = 0
        self.repeated = 0

    def add(self, digests: Sequence[int | None]) -> None:
        """Hold a page of digests (each once), counting the rows known by none (None) and the digests
        given again."""
        while self.count + len(digests) >= self.size:  # the state gained rows since it was counted
            self._grow()
        slots, marks, size, empty = self.slots, self.marks, self.size, self.EMPTY
        count, repeated = self.count, 0
        for digest in digests:
            if digest is None:
                continue
            slot = digest % size
            while marks[slot] != empty:
                if slots[slot] == digest:
                    repeated += 1
                    break
                slot = slot + 1 if slot + 1 < size else 0
            else:
                slots[slot], marks[slot] = digest, 0
                count += 1
        self.count, self.repeated = count, self.repeated + repeated
        self.unknown += digests.count(None)

    @property
    def unmet_rows(self) -> int | None:
        """How many of the rows given to :meth:`add` no model row matched (after the diff): those known
        by no digest, and one per unmet digest; None when a digest came twice (its rows cannot be told
        apart: a 64-bit collision, or a state holding a key twice)."""
        if self.repeated:
            return None
        return self.unknown + self.marks.count(0)

    def fresh(self) -> Callable[[bytes], int | None]:
        """The row digest for the diff's statement: a function of a row's text (:data:`.dialects.SQLITE_ROW_TEXT`)
        answering its digest (:func:`.dialects.text_digest`) when the table does not hold it (a new or changed
        row), None, having marked it, when it does (an unchanged row).

        SQLite calls it once per model row: it hashes the text itself rather than call ``text_digest`` (the
        same BLAKE2b state copied, so the same digest), and reads the table through its closure's names
        rather than this object's attributes (the call and the attributes were a sixth of its CPU). Ask
        for it once every digest is added: the table it holds is the one of that moment.
        """
        slots, marks, size, empty = self.slots, self.marks, self.size, self.EMPTY
        blake2b, from_bytes = BLAKE2B_8, int.from_bytes

        def fresh(text: bytes) -> int | None:
            state = blake2b.copy()
            state.update(text)
            digest = from_bytes(state.digest(), "big", signed=True)
            slot = digest % size
            while (mark := marks[slot]) != empty:
                if slots[slot] == digest:
                    if mark:  # met again: two model rows share its cells (a duplicate EXTERN_ID)
                        marks[slot] = 2
                        self.met_again += 1
                    else:
                        marks[slot] = 1
                    return None
                slot = slot + 1 if slot + 1 < size else 0
            return digest

        return fresh

    @property
    def rows(self) -> int:
        """How many model rows :meth:`fresh` found known (the unchanged rows, duplicates included)."""
        return self.marks.count(1) + self.marks.count(2) + self.met_again

    def digests(self, *, twice: bool) -> Iterator[int]:
        """The digests met twice or more (``twice``), or never met."""
        marks, value = self.marks, 2 if twice else 0
        slot = marks.find(value)
        while slot != -1:
            yield self.slots[slot]
            slot = marks.find(value, slot + 1)

    def _grow(self) -> None:
        """Twice the slots, holding the same digests (before any is met)."""
        grown = KnownDigests(2 * max(self.count, self.size))
        grown.add([digest for digest, mark in zip(self.slots, self.marks, strict=True) if mark != self.EMPTY])
        self.size, self.slots, self.marks = grown.size, grown.slots, grown.marks
