"""A first sync that sends as it reads: every row is new, so nothing needs the whole model staged first.

What a run refuses before anything is created or sent still is: a first pass reads the model once (so a
missing column or a cell the driver cannot read fails it, as in a staged run), parses every membership
cell, and keeps a 64-bit hash of each key as sent (8 bytes a row past a partition's size, see
:class:`KeyDigests`). Only when no two keys can be equal and no key looks personal does the run stream;
otherwise it takes the staged path, which refuses the model exactly as any run does (a key shared with a
row the preparer rejects is no duplicate there, so the staged verdict is the one that counts). Reading the
rows costs a fraction of preparing them. On SQLite both passes read one copy of the model
(:mod:`.model_copy`): the stream sends exactly the rows checked.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from airflow_provider_fbca.sync.plan import SyncMode, SyncPlan
from airflow_provider_fbca.sync.row_key import PERSONAL, clean_keys, row_key_problem
from airflow_provider_fbca.sync.state import StagedRow

_BUCKETS = 256
#: The keys whose hashes one set holds (at most some 20 MiB); past them, 256 arrays hold 8 bytes a key.
SET_KEYS = 262_144


@dataclass(frozen=True)
class KeyScan:
    """What the first pass over the key column found.

    :param rows: the model's rows.
    :param members: the rows whose membership cell is true (all rows without a membership column): the
        session's ``estimated_num_total`` (rows the preparer rejects make it an estimate).
    :param streamable: no two keys may be equal and no key looks personal: the run may send as it reads.
    """

    rows: int
    members: int
    streamable: bool


def scan_keys(
    chunks: Iterable[Sequence[Sequence[Any]]],
    key_index: int,
    normalize_keys: Callable[[list[Any]], list[str]],
    membership: Callable[[Any], bool] | None = None,
) -> KeyScan:
    """Read the model once, holding a 64-bit hash per key, and tell whether the run may stream.

    Two keys with equal hashes count as possibly equal (a false alarm only costs the staged path). The
    hashes are Python's own string hashes (salted per process, which only has to tell this run's keys
    apart; computed in C), kept by :class:`KeyDigests`.

    :param chunks: the model's rows (identifier values in mapping order, then membership).
    :param key_index: the position of the EXTERN_ID cell.
    :param normalize_keys: the EXTERN_ID rule over a column of cells (the keys as sent).
    :param membership: parses a row's last cell, its membership (raises on one that is neither true nor
        false); None without a membership column.
    :raises ValueError: a membership cell is neither true nor false.
    """
    digests = KeyDigests()
    rows = members = 0
    personal = False
    for chunk in chunks:
        rows += len(chunk)
        members += len(chunk) if membership is None else sum(map(membership, [row[-1] for row in chunk]))
        if personal:
            continue  # the staged path decides; the membership cells are still checked
        keys = normalize_keys(list(map(itemgetter(key_index), chunk)))
        personal = _any_personal(keys)
        digests.add(keys)
    streamable = rows > 0 and not personal and not digests.repeated()
    return KeyScan(rows, members, streamable)


class KeyDigests:
    """The hashes of the keys seen, telling whether two were equal.

    The first :data:`SET_KEYS` keys (a partition's share, some 100,000, fits) go into one set, filled in C:
    a third of the CPU of sorting hashes into buckets key by key. The keys after them go into 256 arrays by
    their low byte (8 bytes a key, each array checked alone at the end, and against the set), so a model
    of millions of rows never holds a set of millions of Python integers.

    :param set_keys: the keys held in the set before the arrays take over (tests lower it).
    """

    def __init__(self, set_keys: int = SET_KEYS) -> None:
        self.set_keys = set_keys
        self.seen: set[int] = set()
        self.count = 0  # the keys whose hashes went into the set
        self.buckets = [array("q") for _ in range(_BUCKETS)]

    def add(self, keys: list[str]) -> None:
        """Hold the hashes of more keys."""
        if self.count < self.set_keys:
            self.seen.update(map(hash, keys))
            self.count += len(keys)
            return
        buckets = self.buckets
        for digest in map(hash, keys):
            buckets[digest & (_BUCKETS - 1)].append(digest)

    def repeated(self) -> bool:
        """Whether two of the keys added had equal hashes (so may be equal)."""
        seen = self.seen
        return len(seen) < self.count or any(
            len(set(bucket)) < len(bucket) or not seen.isdisjoint(bucket) for bucket in self.buckets if bucket
        )


def _any_personal(keys: list[str]) -> bool:
    """Whether a key looks personal (a batch of plain keys is cleared at once)."""
    return not clean_keys(keys) and any(row_key_problem(key) in PERSONAL for key in keys)


class StreamedPage(list):  # type: ignore[type-arg]
    """A page of staged rows (what the journal and the state record) with their wire rows (what is sent),
    so that nothing is decoded again between preparing a row and sending it."""

    wire: list[list[str]]


def streamed_pages(
    chunks: Iterable[tuple[list[StagedRow], list[Any]]], size: int, first: int | None = None
) -> Iterator[StreamedPage]:
    """Regroup prepared rows into pages of ``size`` (the first one of ``first`` rows, the last one shorter
    when the rows run out before their count).

    :param chunks: stage rows and their wire rows (in the same order), in chunks of any size.
    :param size: rows per page.
    :param first: rows of the first page (at most ``size``); None: ``size``.
    """
    page, wire, full = StreamedPage(), [], first or size
    for staged, wire_rows in chunks:
        start = 0
        while start < len(staged):
            end = start + full - len(page)
            page += staged[start:end]
            wire += wire_rows[start:end]
            start = end
            if len(page) == full:
                page.wire = wire
                yield page
                page, wire, full = StreamedPage(), [], size
    if page:
        page.wire = wire
        yield page


def encode_streamed(page: StreamedPage) -> list[list[str]]:
    """The wire rows of a streamed page (the ``encode`` of its upload session)."""
    return page.wire


def streamed_plan(mode: SyncMode, sent: int, non_members: int) -> SyncPlan:
    """The plan a streamed first sync carried out: every member row new and sent, nothing else.

    :param mode: the run's mode.
    :param sent: the member rows sent.
    :param non_members: the rows whose membership cell was false (neither sent nor recorded).
    """
    return SyncPlan(
        mode=mode,
        full_refresh=False,
        state_rows=0,
        new_rows=sent,
        updated=0,
        updated_identifiers=0,
        unchanged=0,
        non_members=non_members,
        non_members_in_state=0,
        gone=0,
        to_add=sent,
        to_remove=0,
        to_record=0,
        removals=0,
        updates_sent=0,
        skipped_by_mode=0,
    )
