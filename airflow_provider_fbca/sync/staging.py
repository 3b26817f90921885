"""Preparing the model's rows for a run: skip the unchanged ones, normalize and hash the others.

A row whose source cells are exactly those the state recorded for a row (same source digest) is unchanged:
it is only counted and marked seen (so that it is neither gone nor a duplicate). The others are prepared
(normalized and hashed) and staged, or streamed straight to Meta by a first sync.

The source digest of a row is computed by the client (:func:`.dialects.client_row_digest`) or, with the
diff in the warehouse, by the database (:mod:`.pushdown`), whose rows arrive as ``(digest, *cells)``.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from airflow_provider_fbca.sync.dialects import client_row_digest
from airflow_provider_fbca.sync.plan import RowStager, load_defaults
from airflow_provider_fbca.sync.rejects import RejectsTable
from airflow_provider_fbca.sync.report import SyncReport
from airflow_provider_fbca.sync.row_key import (
    PERSONAL,
    clean_keys,
    refuse_personal_key,
    row_key_problem,
)
from airflow_provider_fbca.sync.state import StagedRow, StateStore

if TYPE_CHECKING:
    from airflow_provider_fbca.sync.engine import RowPreparerLike, SyncOptions
    from airflow_provider_fbca.sync.worker import PreparerProcess

#: A chunk's prepared rows: their stage rows and, in the same order, their wire rows (what is sent).
Staged = tuple[list[StagedRow], list[Sequence[str]]]

#: A digested row's digest and cells (``(digest, *cells)``); a source row's cells without its membership.
_DIGEST, _CELLS, _IDENTIFIER_CELLS = itemgetter(0), itemgetter(slice(1, None)), itemgetter(slice(None, -1))

_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off", ""})


def parse_membership(value: Any) -> bool:
    """Read a membership cell: booleans, numbers and the usual words; NULL means not a member.

    :raises ValueError: on a value that is neither true nor false, rather than guess.
    """
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    # Described, not quoted: a membership_column set to the wrong column would put its PII in the log.
    raise ValueError(
        f"A membership cell holds a {len(text)}-character text that is neither true nor false; expected a "
        "boolean, 0/1, true/false or yes/no. Check that membership_column names the membership column."
    )


class ModelStager:
    """Prepares a run's model rows, skipping those whose source cells the state already holds.

    :param preparer: turns raw identifier values into wire rows.
    :param options: the run's options.
    :param report: the run's report (rows read, prepared, rejected, dropped values).
    :param key_normalizer: the EXTERN_ID rule, for rows that are not prepared again.
    :param digest_seed: what else changes preparation (schema, membership, default country).
    :param rejects: where the rows that lost values are listed; None: nowhere.
    """

    def __init__(
        self,
        preparer: RowPreparerLike,
        options: SyncOptions,
        report: SyncReport,
        key_normalizer: Callable[[Any], str],
        digest_seed: str,
        rejects: RejectsTable | None = None,
    ) -> None:
        self.preparer = preparer
        self.options = options
        self.report = report
        self.key_normalizer = key_normalizer
        self.digest_seed = digest_seed
        self.rejects = rejects
        self.row_stager = RowStager(preparer.schema)
        self.known_digests: array[int] | None = None
        self.seen = bytearray()  # per known digest: did a model row of this run have it
        self.seen_duplicate_keys: list[str] = []

    @property
    def seen_count(self) -> int | None:
        """How many known rows the run skipped as unchanged; None when it skipped none by design."""
        return None if self.known_digests is None else self.seen.count(1)

    def unseen_digests(self) -> Iterator[int]:
        """The known source digests no model row had (rows changed or gone)."""
        assert self.known_digests is not None
        return (d for d, seen in zip(self.known_digests, self.seen, strict=True) if not seen)

    def load_known_digests(self, store: StateStore, sync_key: str) -> None:
        """Read the state's source digests into a compact sorted array (8 bytes a row).

        Skipping the preparation of unchanged rows is what makes an incremental run cheap; the array
        is the only per-row memory a run holds, an order of magnitude below the rows themselves.
        """
        members_only = self.options.adds_enabled  # a tracked-only row must be prepared to be sent
        self.known_digests = array("q", store.source_digests(sync_key, members_only))
        self.seen = bytearray(len(self.known_digests))

    # -- staging ---------------------------------------------------------------------------------------

    def stage_chunk(self, chunk: Sequence[Sequence[Any]], state_empty: bool) -> list[tuple[Any, ...]]:
        """Stage rows shaped for :meth:`StageTable.load`: only rows whose source cells changed.

        :param chunk: source rows (identifier values in mapping order, then membership).
        :param state_empty: the state held no row of this sync when the run started.
        """
        defaults = {
            member: load_defaults(member, self.options.adds_enabled, state_empty) for member in (0, 1)
        }
        return [(*row[:6], *defaults[row.member], row.source_digest) for row in self.prepare(chunk)[0]]

    def stage_digested(
        self, chunk: Sequence[Sequence[Any]], state_empty: bool, count_read: bool = False
    ) -> list[tuple[Any, ...]]:
        """Like :meth:`stage_chunk`, for rows the database digested (``(digest, *cells)``), each new or
        changed: after a diff in the warehouse, which skipped the unchanged ones and counted the rows read.

        :param count_read: count the rows as read (no diff ran: every row is read this way).
        """
        defaults = {
            member: load_defaults(member, self.options.adds_enabled, state_empty) for member in (0, 1)
        }
        return [
            (*row[:6], *defaults[row.member], row.source_digest)
            for row in self.prepare_digested(chunk, count_read)[0]
        ]

    def prepare(self, chunk: Sequence[Sequence[Any]]) -> Staged:
        """Prepare the chunk's rows whose source cells changed: their stage rows and wire rows.

        :param chunk: source rows (identifier values in mapping order, then membership).
        """
        self.report.rows_read += len(chunk)
        seed = self.digest_seed
        digests = [client_row_digest(seed, row) for row in chunk]
        known, seen = self.known_digests, self.seen
        if known is None:
            return self._prepare(chunk, range(len(chunk)), digests, self.report.rows_read - len(chunk) + 1)
        fresh: list[int] = []  # indices of the rows to prepare
        for index, digest in enumerate(digests):
            position = _position(known, digest)
            if position < 0:
                fresh.append(index)
            elif seen[position]:  # the very same cells twice: the same key twice
                key = self.key_normalizer(chunk[index][self.options.source_key_index or 0])
                self.seen_duplicate_keys.append(key)
            else:
                seen[position] = 1
        return self._prepare(chunk, fresh, digests, self.report.rows_read - len(chunk) + 1)

    def prepare_digested(self, chunk: Sequence[Sequence[Any]], count_read: bool = False) -> Staged:
        """Prepare rows the database digested (``(digest, *cells)``), every one of them.

        :param chunk: digested rows.
        :param count_read: count them as rows read (a first sync, which reads every row this way).
        """
        if count_read:
            self.report.rows_read += len(chunk)
        cells = list(map(_CELLS, chunk))
        first_row = self.report.rows_read - len(chunk) + 1 if count_read else None
        return self._prepare(cells, range(len(cells)), list(map(_DIGEST, chunk)), first_row)

    def prepare_stream(
        self, chunks: Iterable[Sequence[Sequence[Any]]], digested: bool, worker: PreparerProcess | None
    ) -> Iterator[Staged]:
        """A first sync's chunks, prepared (see :meth:`prepare` and :meth:`prepare_digested`): stage rows
        and wire rows per chunk.

        With a worker process, chunk k+1 is read and sent to it before chunk k's rows are handed out, so
        the worker prepares it while this process stages, journals and sends chunk k.

        :param chunks: the model's rows, ``(digest, *cells)`` each when ``digested``.
        :param digested: the database digested the rows.
        :param worker: prepares the chunks in another process; None: in this one.
        """
        if worker is None:
            for chunk in chunks:
                yield self.prepare_digested(chunk, count_read=True) if digested else self.prepare(chunk)
            return
        assert self.known_digests is None  # a first sync prepares every row
        pending: tuple[Sequence[Sequence[Any]], int] | None = None
        for chunk in chunks:
            worker.submit(chunk, self.options.has_membership, digested)
            self.report.rows_read += len(chunk)
            if pending is not None:
                yield self._prepared_by(worker, *pending, digested)
            pending = chunk, self.report.rows_read - len(chunk) + 1
        if pending is not None:
            yield self._prepared_by(worker, *pending, digested)

    def _prepared_by(
        self, worker: PreparerProcess, chunk: Sequence[Sequence[Any]], first_row: int, digested: bool
    ) -> Staged:
        """The worker's answer to ``chunk``, staged and counted as :meth:`_prepare` does."""
        digests, prepared, encoded = worker.result()
        if digested:
            chunk, digests = list(map(_CELLS, chunk)), list(map(_DIGEST, chunk))
        fresh = range(len(chunk))
        values = self._values(chunk, fresh) if self.rejects is not None else ()
        self._count(values, len(chunk), prepared)
        return self._staged(chunk, fresh, digests, first_row, prepared, encoded)

    def _values(self, chunk: Sequence[Sequence[Any]], fresh: Sequence[int]) -> list[Sequence[Any]]:
        """The identifier cells of the ``fresh`` rows, as the preparer takes them."""
        rows = chunk if len(fresh) == len(chunk) else [chunk[i] for i in fresh]  # all fresh: a first sync
        return list(map(_IDENTIFIER_CELLS, rows)) if self.options.has_membership else list(rows)

    def _count(self, values: Sequence[Sequence[Any]], prepared_rows: int, prepared: Any) -> None:
        """Count what the preparer rejected and dropped; list the rows that lost values."""
        report = self.report
        report.rows_prepared += prepared_rows
        report.rejected += len(prepared.rejected)
        report.rejected_by_reason.update(prepared.rejected_by_reason)
        report.dropped_values.update(prepared.dropped)
        if self.rejects is not None:
            self.rejects.record(values, prepared)

    def _prepare(
        self,
        chunk: Sequence[Sequence[Any]],
        fresh: Sequence[int],
        digests: Sequence[int],
        first_row: int | None,
    ) -> Staged:
        """Prepare the ``fresh`` rows of the chunk; count what the preparer rejected and dropped.

        :param first_row: the position of the chunk's first row in the query's result (1-based), for the
            refusal of a personal EXTERN_ID; None when rows do not come in the query's order.
        """
        if not fresh:
            return [], []
        values = self._values(chunk, fresh)
        prepared = self.preparer.prepare_rows(values)
        self._count(values, len(values), prepared)
        return self._staged(chunk, fresh, digests, first_row, prepared)

    def _staged(
        self,
        chunk: Sequence[Sequence[Any]],
        fresh: Sequence[int],
        digests: Sequence[int],
        first_row: int | None,
        prepared: Any,
        encoded: Sequence[tuple[str, str, str]] | None = None,
    ) -> Staged:
        """The kept rows' stage rows and wire rows (``encoded``: the kept rows as :meth:`.RowStager.encode`
        encodes them, when a worker process did); refuses a personal EXTERN_ID, rejects a key the state
        cannot hold."""
        key_index = self.row_stager.key_index
        wire_rows: list[Sequence[str]] = prepared.rows
        # Every row of the chunk prepared and kept (a first sync's chunk, as a rule): each kept row's index
        # in the chunk is its own, and so are the digests' positions.
        whole = fresh == range(len(chunk)) and len(prepared.kept) == len(chunk)
        sources = prepared.kept if whole else list(map(fresh.__getitem__, prepared.kept))
        if not clean_keys([wire_row[key_index] for wire_row in wire_rows]):
            wire_rows, sources, encoded = self._checked_keys(wire_rows, sources, encoded, first_row)
            whole = len(sources) == len(chunk)
        members = None
        if self.options.has_membership:
            members = [parse_membership(chunk[index][-1]) for index in sources]
        source_digests = list(digests) if whole else [digests[index] for index in sources]
        return self.row_stager.stage_rows(wire_rows, members, source_digests, encoded), wire_rows

    def _checked_keys(
        self,
        wire_rows: list[Sequence[str]],
        sources: list[int],
        encoded: Sequence[tuple[str, str, str]] | None,
        first_row: int | None,
    ) -> tuple[list[Sequence[str]], list[int], list[tuple[str, str, str]] | None]:
        """The rows whose EXTERN_ID can key a row (the others rejected and counted), a batch whose keys
        :func:`.clean_keys` did not clear; refuses the run at the first personal one."""
        key_index, report = self.row_stager.key_index, self.report
        kept: list[int] = []
        for position, (wire_row, source_index) in enumerate(zip(wire_rows, sources, strict=True)):
            problem = row_key_problem(wire_row[key_index])
            if problem in PERSONAL:
                raise refuse_personal_key(problem, None if first_row is None else first_row + source_index)
            if problem:
                report.rejected += 1
                report.rejected_by_reason[problem] += 1
            else:
                kept.append(position)
        return (
            [wire_rows[position] for position in kept],
            [sources[position] for position in kept],
            None if encoded is None else [encoded[position] for position in kept],
        )


def _position(sorted_values: array[int], value: int) -> int:
    """The index of ``value`` in a sorted array, or -1."""
    position = bisect_left(sorted_values, value)
    return position if position < len(sorted_values) and sorted_values[position] == value else -1
