"""SQLite's prefilter of the state rows that may hold a removal identifier (see :mod:`.removals`).

A registered function called once per state row: it must cost next to nothing, so it reads only the
values at the withheld positions of the row's schema and looks each up in a table of flags.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from airflow_provider_fbca.identifiers import MATCH_KEYS
from airflow_provider_fbca.sync.stored_rows import _SEPARATOR, leading_identifiers

#: The keys a removal row leaves out when a staying row shares the value: strong identifiers (EXTERN_ID,
#: the row's own key, is not an identifier in this sense and is always carried).
WITHHELD_WHEN_SHARED = frozenset(key.name for key in MATCH_KEYS if key.strong and key.identifier)


class MayHold:
    """Whether a stored row may hold one of the removal identifiers: SQLite's prefilter of the holders.

    A table of flags indexed by the values' hashes (Python's own, stable within the process): a row none of
    whose withheld values hits a flag holds none of them; a hit is only "maybe" (another value may share
    the flag), and the exact join settles it. The table is sized to the removals (about 1.5% of misses hit
    a flag) and small enough to stay in the processor's cache; it never exceeds 8 MiB.

    :param keys: the withheld keys the removal rows carry (the positions checked in each schema).
    :param expected: how many values :meth:`add` will be given (sizes the table).
    """

    def __init__(self, keys: Collection[str], expected: int) -> None:
        size = 1 << 16
        while size < 64 * expected and size < 1 << 23:
            size <<= 1
        self.mask = size - 1
        self.flags = bytearray(size)
        self.keys = frozenset(keys)
        self.checkers: dict[str, Callable[[str], int]] = {}

    def add(self, values: Iterable[str]) -> None:
        """Flag removal identifiers' values."""
        flags, mask = self.flags, self.mask
        for value in values:
            flags[hash(value) & mask] = 1

    def check(self, key_schema: str, identifiers: str) -> int:
        """1 when the row may hold a removal identifier at a withheld position of its schema, else 0.

        :param key_schema: the stored row's schema.
        :param identifiers: the stored row's identifiers (see :func:`.state.encode_identifiers`).
        """
        checker = self.checkers.get(key_schema)
        if checker is None:
            checker = self.checkers[key_schema] = self.checker(key_schema)
        return checker(identifiers)

    def checker(self, key_schema: str) -> Callable[[str], int]:
        """:meth:`check` of the rows of one schema, given their identifiers only (called once per state row).

        :param key_schema: the rows' schema.
        """
        positions = tuple(i for i, key in withholdable(key_schema) if key in self.keys)
        if not positions:
            return _holds_none
        # Split only as far as the last withheld position: the rest of the row is never read.
        count, flags, mask = positions[-1] + 1, self.flags, self.mask

        def check(identifiers: str) -> int:
            values = identifiers.split(_SEPARATOR, count)
            if len(values) < count:  # stored as JSON (then no separator splits it), or a short row
                values = leading_identifiers(identifiers, count)
                values += [""] * (count - len(values))  # no removal value is empty
            for position in positions:
                if flags[hash(values[position]) & mask]:
                    return 1
            return 0

        if len(positions) > 1:
            return check
        # One key left to look for (an e-mail change: the kept phone is held by the addition): no loop,
        # 6% of the scan's instructions.
        (position,) = positions

        def check_one(identifiers: str) -> int:
            values = identifiers.split(_SEPARATOR, count)
            return flags[hash(values[position]) & mask] if len(values) >= count else check(identifiers)

        return check_one


def _holds_none(identifiers: str) -> int:
    """The check of a schema without a withheld key of the removals: no row of it holds their values."""
    return 0


def withholdable(key_schema: str) -> list[tuple[int, str]]:
    """``(position, key)`` of the keys of a schema that a removal row withholds when shared."""
    return [(i, key) for i, key in enumerate(key_schema.split(",")) if key in WITHHELD_WHEN_SHARED]
