"""Sending a planned run: upload sessions of journaled pages, refused removals, the full refresh.

Every page goes through the write-ahead journal (:mod:`.journal`): recorded as pending before it is sent,
settled by one transaction when Meta answers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_fbca.sync.batches import SessionResult, UploadSession
from airflow_provider_fbca.sync.first_sync import StreamedPage, encode_streamed
from airflow_provider_fbca.sync.journal import (
    ADD,
    OWED,
    REMOVE,
    REPLACE,
    OpenRefresh,
    PageJournal,
    RemovalRow,
)
from airflow_provider_fbca.sync.lease import SyncLease
from airflow_provider_fbca.sync.plan import (
    SyncPlan,
    SyncPlanError,
    addition_pages,
    mark_leaving_rows,
)
from airflow_provider_fbca.sync.removals import Removals
from airflow_provider_fbca.sync.report import SyncReport
from airflow_provider_fbca.sync.second_look import OwedLooks
from airflow_provider_fbca.sync.state import StagedRow, StageTable, StateStore, decode_identifiers
from airflow_provider_fbca.sync.wal_checkpoint import WalCheckpointer

if TYPE_CHECKING:
    from airflow_provider_fbca.sync.engine import SyncOptions

log = logging.getLogger(__name__)

#: Meta's error codes that refuse a removal itself, so the run goes on with its additions: 200 (its
#: subcode 1870047: the audience would become too small), 100 (a parameter) and 2650 (the audience update).
REFUSAL_CODES = frozenset({100, 200, 2650})
#: usersreplace subcodes saying a session cannot be continued: never started, timed out, finished.
REPLACE_NOT_CONTINUABLE = frozenset({1870147, 1870158, 1870159})


class RemovalsRefusedError(RuntimeError):
    """Meta refused some removals for good; the additions landed and the refused removals stay owed.

    :param report: the run's report (its ``removals_refused`` counts them).
    """

    def __init__(self, message: str, report: SyncReport) -> None:
        super().__init__(message)
        self.report = report


class AudienceClient(Protocol):
    """The part of FacebookCustomAudiencesHook a sync uses."""

    def add_users(
        self, audience_id: str, schema: Any, data: Any, session: Any = None, **kwargs: Any
    ) -> dict: ...

    def remove_users(
        self, audience_id: str, schema: Any, data: Any, session: Any = None, **kwargs: Any
    ) -> dict: ...

    def replace_users(
        self, audience_id: str, schema: Any, data: Any, session: Any = None, **kwargs: Any
    ) -> dict: ...


class PlanSender:
    """Sends one run's plan through upload sessions, every state write through the journal.

    :param store: the state store.
    :param client: the Graph API hook.
    :param options: the run's options.
    :param journal: the sync's page journal.
    :param lease: the run's lease, renewed per acknowledged page and while a page is in flight.
    :param report: the run's report, which the sessions and refusals are added to.
    :param schema: the wire schema of the model's rows.
    :param open_refresh: a full refresh a killed run left unfinished, which this run finishes.
    :param heartbeat_s: how often the lease is looked after while a page is in flight.
    """

    def __init__(
        self,
        store: StateStore,
        client: AudienceClient,
        options: SyncOptions,
        journal: PageJournal,
        lease: SyncLease,
        report: SyncReport,
        *,
        schema: list[str],
        open_refresh: OpenRefresh | None,
        heartbeat_s: float,
    ) -> None:
        self.store = store
        self.client = client
        self.options = options
        self.journal = journal
        self.lease = lease
        self.report = report
        self.schema = schema
        self.open_refresh = open_refresh
        self.full_refresh = options.full_refresh or open_refresh is not None
        self.heartbeat_s = heartbeat_s
        self.refusals: list[str] = []  # Meta's refusals of removals, described

    def send(self, stage: StageTable, plan: SyncPlan) -> None:
        """Send the plan: removals (planned and owed) first, then additions; or the full refresh."""
        if self.full_refresh:
            if self._replace(stage, plan):
                # The resumed replace kept what the killed run had sent: remove what left the model since.
                mark_leaving_rows(self.store, stage)
                self._send_removals(stage)
            return
        # An acknowledged removal page deletes its state rows, spread over the table (an updated person's
        # row goes, and comes back with the addition): tens of megabytes of log a commit at a million rows,
        # which SQLite would copy back inside that commit. Copied from another thread instead, while the
        # run goes on with its additions (see :mod:`.wal_checkpoint`).
        with WalCheckpointer(self.store.conn, self.store.table_name) as checkpointer:
            # Removals first: an updated person loses the old identifiers before getting the new ones.
            self._send_removals(stage, checkpointer.committed)
            if plan.to_add:
                self._add(stage, plan)
            if plan.to_record:
                self.lease.keep_alive()
                self.journal.tracked(stage)

    def _new_session(
        self,
        kind: str,
        total: int,
        encode: Any,
        send: Any,
        acknowledge: Any,
        *,
        session_id: int | None = None,
        first_batch_seq: int = 1,
        refuse: Any = None,
        record_page: Any = None,
        counted: Callable[[], int] | None = None,
    ) -> UploadSession[Any]:
        """An upload session of the run, every page journaled.

        :param record_page: records a page as pending, with its ``session`` object (default: its rows in
            the journal, :meth:`.PageJournal.record`).
        :param counted: the rows the pages hold as counted so far: the last batch is flagged by count
            (see :class:`.UploadSession`); None: by reading a page ahead.
        """
        if session_id is None:
            session_id = self.store.new_session_id(self.options.sync_key, kind)

        def acknowledge_and_renew(page: Any, session: dict[str, Any]) -> None:
            # Record what Meta accepted first: committed, or left open for the next commit, which a
            # renewal is while the lease holds (a lost lease rolls it back, as the fence does).
            acknowledge(page, session)
            self.lease.keep_alive()

        def record(page: Any, session: dict[str, Any]) -> None:
            if record_page is not None:
                record_page(page, session)
                return
            sent = _journal_rows(page)
            self.journal.record(kind, session["session_id"], session["batch_seq"], sent)

        return UploadSession(
            session_id,
            kind,
            total,
            encode,
            send,
            acknowledge_and_renew,
            heartbeat=self.lease.keep_alive,
            heartbeat_s=self.heartbeat_s,
            record=record,
            refuse=refuse,
            first_batch_seq=first_batch_seq,
            max_in_flight=self.options.max_in_flight,
            # A replace's batch 1 starts it; a resumed one's first batch tells whether it can go on.
            first_alone=kind == REPLACE,
            counted=counted,
        )

    def _extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.options.app_ids:
            extra["app_ids"] = list(self.options.app_ids)
        if self.options.page_ids:
            extra["page_ids"] = list(self.options.page_ids)
        return extra

    def _send_removals(self, stage: StageTable, committed: Callable[[], None] = lambda: None) -> None:
        """Send this run's removal rows (planned and owed), shared identifiers withheld.

        :param committed: called after each acknowledged page's commit (the log's checkpointer).
        """
        has_planned = self.store.fetch_one(f"SELECT 1 FROM {stage.name} WHERE to_remove = 1 LIMIT 1")
        if not has_planned and not self.journal.owed_count():
            return
        removals = Removals(self.store, stage, self.options.sync_key)
        looks = OwedLooks(self.store, self.options.sync_key)
        try:
            self.report.identifiers_withheld_shared += removals.build()
            self.report.owed_removals_sent += removals.origins().get(OWED, 0)
            looks.owe(removals)  # done below; a run ending before leaves it to the next (see .second_look)
            for key_schema in removals.schemas():
                self._remove(removals, key_schema, committed)
            removals.unconfirm_late_holders(self.lease.keep_alive)  # a partition's additions racing them
            looks.settle()
        finally:
            removals.drop()

    def _remove(self, removals: Removals, key_schema: str, committed: Callable[[], None]) -> None:
        schema = key_schema.split(",")
        audience_id, extra = self.options.audience_id, self._extra()

        def encode(page: list[RemovalRow]) -> list[list[str]]:
            return [decode_identifiers(row.sent) for row in page]

        def send(data: list[list[str]], session: dict[str, Any]) -> dict[str, Any]:
            return self.client.remove_users(audience_id, schema, data, session=session, **extra)

        def acknowledge(page: list[RemovalRow], session: dict[str, Any]) -> None:
            self.journal.removed(session["session_id"], session["batch_seq"], page)
            committed()

        def refuse(page: list[RemovalRow], session: dict[str, Any], error: Exception) -> bool:
            if not _is_refusal(error):
                return False
            self.journal.refused(session["session_id"], session["batch_seq"], page)
            self.report.removals_refused += len(page)
            self.refusals.append(_describe_error(error))
            log.error(
                "Meta refused the removal of %d row(s) (%s). The run goes on with its additions; these "
                "rows stay owed in the state and are sent again by every later run until Meta takes them.",
                len(page),
                _describe_error(error),
            )
            return True

        total = removals.count(key_schema)
        session = self._new_session(REMOVE, total, encode, send, acknowledge, refuse=refuse)
        self._finish(session.run(removals.pages(key_schema, self.options.batch_size)))

    def _add(self, stage: StageTable, plan: SyncPlan) -> None:
        self._add_pages(
            addition_pages(self.store, stage, self.options.batch_size),
            plan.to_add,
            _encode_staged,
            new_to_state=self._additions_new_to_state(stage),
            counted=lambda: plan.to_add,  # the stage's rows to add, which the pages read
        )

    def _additions_new_to_state(self, stage: StageTable) -> bool:
        """Whether no addition has a state row any more (the removals went first): PostgreSQL then
        records the acknowledged rows by COPY, about half the server's CPU of an upsert (see
        ``StateStore.upsert``).

        An addition keeps its state row when the run does not remove it first: an update of its
        non-identifier values, or a tracked non-member joining. A removed row (acknowledged, or refused
        and owed) has none. Only a hint: a row there after all is upserted, as before.
        """
        if not self.store.is_postgres:
            return False
        kept = self.store.fetch_one(
            f"SELECT 1 FROM {stage.name} WHERE to_add = 1 AND in_state = 1 AND to_remove = 0 LIMIT 1"
        )
        return not kept

    def add_stream(self, pages: Iterable[StreamedPage], estimated_total: int) -> SessionResult:
        """Send a streamed first sync's pages as they are prepared (see :mod:`.first_sync`).

        :param pages: pages of staged rows carrying their wire rows.
        :param estimated_total: the rows the pages should hold (rows the preparer rejects make it more):
            less the rows rejected so far, it flags the last batch without reading a page ahead, so the
            first batch goes as soon as its page is prepared.
        """
        rejected = self.report.rejected

        def counted() -> int:
            return estimated_total - (self.report.rejected - rejected)

        return self._add_pages(pages, estimated_total, encode_streamed, new=True, counted=counted)

    def _add_pages(
        self,
        pages: Iterable[list[StagedRow]],
        total: int,
        encode: Any,
        *,
        new: bool = False,
        new_to_state: bool = False,
        counted: Callable[[], int] | None = None,
    ) -> SessionResult:
        """Send pages of additions in one session, journaled.

        :param new: the rows are new to the state (a streamed first sync into an empty slice, under the
            lease, owing nothing): their state rows are written ahead with each page's pending row
            (:meth:`.PageJournal.record_new`; by COPY where the database has it), so that Meta's
            acknowledgement only settles the page.
        :param counted: the rows the pages hold as counted so far (see :class:`.UploadSession`).
        :param new_to_state: the rows are expected to be new to the state when Meta acknowledges them:
            recorded then (as any run's), by COPY where the database has it.
        """
        audience_id, extra = self.options.audience_id, self._extra()
        journal = self.journal
        owed = journal.owed_count() > 0  # the removals went first: an addition session owes no more
        ahead, fresh = new and not owed, new or new_to_state

        def send(data: list[list[str]], session: dict[str, Any]) -> dict[str, Any]:
            return self.client.add_users(audience_id, self.schema, data, session=session, **extra)

        settled: list[tuple[int, int]] = []  # pages written ahead that Meta acknowledged, not yet dropped

        def settle() -> None:
            # Dropped right before the next page's record, in its transaction: no transaction stays open
            # while the next page is read and prepared (it would hold the database's write lock, and keep
            # SQLite from starting its log over).
            while settled:
                journal.settle(*settled.pop(0), commit=False)

        def record_new(page: list[StagedRow], session: dict[str, Any]) -> None:
            checkpointer.wait_for_checkpoint()  # this page's write then starts the log over
            settle()
            journal.record_new(session["session_id"], session["batch_seq"], page)
            checkpointer.committed()

        def acknowledge(page: list[StagedRow], session: dict[str, Any]) -> None:
            # Committed with the next page's record: one commit per page (or by save, after the last).
            if ahead:
                settled.append((session["session_id"], session["batch_seq"]))
            else:
                journal.added(
                    session["session_id"], session["batch_seq"], page, owed=owed, commit=False, new=fresh
                )

        session = self._new_session(
            ADD, total, encode, send, acknowledge, record_page=record_new if ahead else None, counted=counted
        )
        # Pages written ahead are megabytes a commit: their log is copied back from another thread.
        checkpointer = WalCheckpointer(self.store.conn if ahead else None, self.store.table_name)
        with checkpointer:
            try:
                result = session.run(pages)
            finally:
                settle()
                journal.save()  # what Meta acknowledged is recorded, even when a later page failed
        self._finish(result)
        return result

    def _replace(self, stage: StageTable, plan: SyncPlan) -> bool:
        """Replace the audience with the model; True when it resumed the replace a killed run left open.

        A resumed replace goes on in the killed run's session, after its last batch: Meta keeps what that
        session received, so the caller then removes the rows of it that left the model. When Meta says
        the session cannot go on (never started, timed out, finished), a fresh replace starts.
        """
        if not plan.to_add:
            raise SyncPlanError(
                "full_refresh would replace the audience with an empty model; usersreplace cannot send "
                "zero rows. Run a mirror sync without full_refresh to remove everyone, if that is intended."
            )
        resume = self.open_refresh
        if resume is not None:
            try:
                self._replace_session(stage, plan, resume.session_id, resume.batch_seq + 1)
                return True
            except Exception as error:
                if getattr(error, "subcode", None) not in REPLACE_NOT_CONTINUABLE:
                    raise
                log.warning(
                    "The unfinished replace cannot go on (%s); starting a fresh one", _describe_error(error)
                )
        self._replace_session(stage, plan, None, 1)
        return False

    def _replace_session(self, stage: StageTable, plan: SyncPlan, session_id: int | None, first: int) -> None:
        audience_id, extra = self.options.audience_id, self._extra()
        fresh = session_id is None
        acknowledged = False

        def send(data: list[list[str]], session: dict[str, Any]) -> dict[str, Any]:
            return self.client.replace_users(audience_id, self.schema, data, session=session, **extra)

        def acknowledge(page: list[StagedRow], session: dict[str, Any]) -> None:
            # The first acknowledged batch of a fresh replace starts it: from then on the old state is void.
            nonlocal acknowledged
            clear = fresh and not acknowledged
            acknowledged = True
            last = bool(session["last_batch_flag"])
            self.journal.replaced(session["session_id"], session["batch_seq"], page, clear=clear, last=last)

        def refuse(page: list[StagedRow], session: dict[str, Any], error: Exception) -> bool:
            if not fresh and not acknowledged and getattr(error, "subcode", None) in REPLACE_NOT_CONTINUABLE:
                self.journal.settle(session["session_id"], session["batch_seq"])  # Meta took none of it
            return False  # the error goes up: a fresh replace starts, or the run fails

        session = self._new_session(
            REPLACE,
            plan.to_add,
            _encode_staged,
            send,
            acknowledge,
            session_id=session_id,
            first_batch_seq=first,
            refuse=refuse,
        )
        self._finish(session.run(addition_pages(self.store, stage, self.options.batch_size)))

    def _finish(self, result: SessionResult) -> None:
        self.report.sessions.append(result)
        log.info(
            "Session %s (%s): %d rows in %d batch(es), Meta received %d, %d invalid entries",
            result.session_id,
            result.kind,
            result.rows,
            result.batches,
            result.num_received,
            result.num_invalid_entries,
        )


def _encode_staged(page: list[StagedRow]) -> list[list[str]]:
    return [decode_identifiers(row.identifiers) for row in page]


def _journal_rows(page: list[Any]) -> list[tuple[str, str, str, str]]:
    """``(row_key, key_schema, identifiers as sent, id_digest)`` of a page's rows, for the journal."""
    if page and isinstance(page[0], RemovalRow):
        return [(row.row_key, row.key_schema, row.sent, row.id_digest) for row in page]
    return list(map(_STAGED_JOURNAL_FIELDS, page))


#: A StagedRow's journal fields (see :func:`_journal_rows`), picked in C: a first sync journals every row.
_STAGED_JOURNAL_FIELDS = itemgetter(
    *(StagedRow._fields.index(name) for name in ("row_key", "key_schema", "identifiers", "id_digest"))
)


def _is_refusal(error: Exception) -> bool:
    """Meta refused a removal for good (not an outage, an expired token or a rate limit)."""
    code = getattr(error, "code", None)
    return code in REFUSAL_CODES and not getattr(error, "is_transient", False)


def _describe_error(error: Exception) -> str:
    """Meta's code, subcode and the provider's remedy: no row data (an error never quotes rows)."""
    code, subcode = getattr(error, "code", None), getattr(error, "subcode", None)
    remedy = getattr(error, "remedy", None)
    named = f"code {code}" + (f"/{subcode}" if subcode else "")
    return f"{named}: {remedy}" if remedy else f"{named}: {type(error).__name__}"
