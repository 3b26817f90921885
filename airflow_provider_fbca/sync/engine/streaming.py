"""A sync run's streamed first sync: the model read, prepared and sent at once, never staged
(:mod:`..first_sync` holds its pieces; :class:`StreamedFirstSync` runs them for :class:`.run.SyncRun`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from itertools import compress
from operator import attrgetter
from typing import Any

from airflow_provider_fbca.sync.engine.options import RemovalGuard, RowPreparerLike, SyncOptions
from airflow_provider_fbca.sync.engine.support import close_rows, describe_plan
from airflow_provider_fbca.sync.first_sync import scan_keys, streamed_pages, streamed_plan
from airflow_provider_fbca.sync.journal import PageJournal
from airflow_provider_fbca.sync.lease import SyncLease
from airflow_provider_fbca.sync.model_copy import ModelCopy
from airflow_provider_fbca.sync.model_snapshot import ModelSnapshot
from airflow_provider_fbca.sync.pushdown import PushdownModel
from airflow_provider_fbca.sync.rejects import RejectsTable
from airflow_provider_fbca.sync.report import SyncReport
from airflow_provider_fbca.sync.source import ModelQuery
from airflow_provider_fbca.sync.staging import ModelStager, Staged, parse_membership
from airflow_provider_fbca.sync.state import StateStore
from airflow_provider_fbca.sync.worker import MIN_ROWS as WORKER_MIN_ROWS
from airflow_provider_fbca.sync.worker import PreparerProcess

log = logging.getLogger(__name__)
_MEMBER = attrgetter("member")

#: What both passes of a first sync read: one copy of the model (SQLite) or one snapshot of it (PostgreSQL).
ModelPasses = ModelCopy | ModelSnapshot


class StreamedFirstSync:
    """The streamed first sync of a :class:`.run.SyncRun`, which holds what it reads (annotated below)
    and creates the audience and the sender it sends with (``_create_audience``, ``_sender``)."""

    #: The fewest rows a streamed first sync prepares in a worker process (tests lower it).
    worker_min_rows = WORKER_MIN_ROWS

    options: SyncOptions
    store: StateStore
    preparer: RowPreparerLike
    digest_seed: str
    state_empty: bool
    full_refresh: bool
    journal: PageJournal
    lease: SyncLease
    removal_guard: RemovalGuard | None
    report: SyncReport
    rejects: RejectsTable | None
    stager: ModelStager
    normalize_keys: Callable[[list[Any]], list[str]]

    def _streams(self, model: ModelQuery) -> bool:
        """Stream a first sync: read, prepare and send at once (see :mod:`.first_sync`); False when the
        run must be staged (not a first sync, or the keys may hold duplicates or personal data)."""
        options = self.options
        first = self.state_empty and options.adds_enabled and not (options.dry_run or self.full_refresh)
        if not first or options.source_key_index is None or self.journal.owed_count():
            return False
        passes: ModelPasses | None = None
        if ModelCopy.applies(model):  # both passes read one copy, in short reads (see .model_copy)
            passes = ModelCopy(model, model.select if isinstance(model, PushdownModel) else None)
        elif ModelSnapshot.applies(model):  # both passes read one snapshot (see .model_snapshot)
            passes = ModelSnapshot(model, holds_state=model.conn is self.store.conn)
        with passes or contextlib.nullcontext():
            return self._stream(model, passes)

    def _stream(self, model: ModelQuery, passes: ModelPasses | None) -> bool:
        """:meth:`_streams` once it is a first sync: the duplicate check's pass, then the stream.

        :param passes: what both passes read: the model's rows copied once (SQLite) or one snapshot of
            them (PostgreSQL); None: each pass runs the model's query.
        """
        options = self.options
        membership = parse_membership if options.has_membership else None
        chunks = model.cells() if passes is None else passes.cells()  # constants change no key or membership
        try:
            scan = scan_keys(chunks, options.source_key_index, self.normalize_keys, membership)
        finally:
            close_rows(chunks)
        if not scan.streamable:
            return False
        if isinstance(passes, ModelSnapshot):  # before anything commits: the stream reads the check's rows
            passes.open_stream()
        if self.rejects is not None:  # before the audience is created: its rejects move to its sync key
            self.rejects.start()
        self.lease.keep_alive(force=True)  # never start sending on a lease taken over meanwhile
        if self.removal_guard is not None:  # a partition's slice counts as empty in its run's budget
            self.removal_guard.streams_first_sync(scan.rows)
        self._create_audience()
        non_members = [0]
        with contextlib.ExitStack() as stack:
            worker = self._preparer_process(scan.rows)
            if worker is not None:
                stack.enter_context(worker)  # closed after the pages: a generator's cursor goes first
            rows = self._streamed_rows(model, passes, non_members, worker)
            stack.callback(
                close_rows, rows
            )  # this frame holds it too: an error's traceback would keep it open
            pages = streamed_pages(
                rows, options.batch_size, first_page_rows(scan.members, options.batch_size)
            )
            stack.callback(close_rows, pages)
            result = self._sender().add_stream(pages, scan.members)
        if self.rejects is not None:
            self.rejects.finish()
        self.report.plan = streamed_plan(options.mode, result.rows, non_members[0])
        log.info("Plan (streamed first sync): %s", describe_plan(self.report.plan))
        return True

    def _preparer_process(self, rows: int) -> PreparerProcess | None:
        """A worker process preparing the streamed rows (see :mod:`.worker`), or None: prepare them here
        (turned off, a model too small to pay for starting it, or a preparer it cannot rebuild)."""
        arguments = getattr(self.preparer, "arguments", None)
        if not self.options.prepare_in_subprocess or rows < self.worker_min_rows or arguments is None:
            return None
        return PreparerProcess(arguments, self.digest_seed)

    def _streamed_rows(
        self,
        model: ModelQuery,
        passes: ModelPasses | None,
        non_members: list[int],
        worker: PreparerProcess | None,
    ) -> Iterator[Staged]:
        """The model's member rows, prepared, a chunk at a time as the session asks for them; counts the
        non-members.

        :param passes: the model's rows copied once, or the snapshot whose stream the check's pass
            opened: read instead of running the query again.
        """
        digested = isinstance(model, PushdownModel)
        chunks: Iterator[list[tuple[Any, ...]]]
        if passes is not None:
            chunks = passes.streamed_rows()
        elif isinstance(model, PushdownModel):
            chunks = model.digested_rows()
        else:
            chunks = model.rows()
        # Closed here, not by the garbage collector: an exception's traceback keeps a failed stream's
        # frames alive, and a collection in another thread could not close the cursor of this connection.
        try:
            for staged, wire_rows in self.stager.prepare_stream(chunks, digested, worker):
                if not all(map(_MEMBER, staged)):  # in C: every row, every chunk
                    members = list(map(_MEMBER, staged))
                    non_members[0] += members.count(0)
                    staged, wire_rows = list(compress(staged, members)), list(compress(wire_rows, members))
                yield staged, wire_rows
                self.lease.keep_alive()
        finally:
            close_rows(chunks)


def first_page_rows(members: int, batch_size: int) -> int:
    """How many rows the first page of a streamed first sync holds: the rows left over by full pages.

    The first page is prepared and journaled before anything is sent, every later one while the batches
    before it are in flight. So the odd rows go first: the first upload leaves after preparing a few rows
    rather than a full page, in as many requests (the closing batch, full, is prepared and journaled while
    the others fly, and Meta's answer takes as long). Without odd rows, every page is full.

    :param members: the rows the stream should send (the duplicate check's count of members).
    :param batch_size: rows per page.
    """
    return members % batch_size or batch_size
