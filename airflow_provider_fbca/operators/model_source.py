"""How SyncAudienceOperator reads its share of the model.

A mixin of the operator: it reads the operator's arguments (the query, the mapping, the membership
column, partitioning, the data processing options) and builds the model's query for the sync engine:
diffed in the warehouse where the state lives there (:class:`.pushdown.PushdownModel`), else read by the
worker (:class:`.source.ModelQuery`, or chunks of rows filtered as read).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseHook
from airflow.providers.common.sql.hooks.sql import DbApiHook

from airflow_provider_fbca.identifiers import PROCESSING_KEYS
from airflow_provider_fbca.sync.partitions import ShareRecorder
from airflow_provider_fbca.sync.pushdown import PushdownModel, shares_database
from airflow_provider_fbca.sync.share import Share
from airflow_provider_fbca.sync.source import ModelQuery
from airflow_provider_fbca.sync.state import StateStore


class ModelSource:
    """The model's rows of a sync: this task's share of the query, with the sync-wide constant cells."""

    if TYPE_CHECKING:  # provided by SyncAudienceOperator
        sql: str
        sql_conn_id: str
        state_conn_id: str
        mapping: Mapping[str, str]
        membership_column: str | None
        fetch_size: int
        full_refresh: bool
        partition: int
        partitions: int
        data_processing_options: Sequence[str] | None
        data_processing_options_country: int | None
        data_processing_options_state: int | None

    def _wanted_columns(self) -> list[str]:
        """The columns read from the model: mapped columns in mapping order, then membership."""
        if self.membership_column is None:
            return list(self.mapping.values())
        return [*self.mapping.values(), self.membership_column]

    @staticmethod
    def _sql_hook(conn_id: str) -> DbApiHook:
        hook = BaseHook.get_connection(conn_id).get_hook()
        if not isinstance(hook, DbApiHook):
            raise TypeError(
                f"Connection {conn_id!r} is not a SQL connection (its hook is {type(hook).__name__})."
            )
        return hook

    def _model(
        self, store: StateStore, source_hook: DbApiHook, key_index: int, *, stage: bool = False
    ) -> ModelQuery | None:
        """The query of this task's share of the model (mapped columns in mapping order, the data
        processing options, then membership): diffed in the warehouse when the state lives there and its
        SQL dialect is known (one connection for both), else read by the worker through a connection of
        its own. A partition's share is the model's query filtered in the warehouse, so it takes the same
        path as one partition (a streamed first sync, a diff in place); None when the warehouse's driver
        cannot filter it (:meth:`_read_chunks` filters the rows as read).

        :param key_index: the position of the EXTERN_ID column among the mapped columns.
        :param stage: the run reads the share twice (a first sync): copy a partition's share once (see
            :meth:`.Share.staged_query`).
        """
        wanted = self._wanted_columns()
        constants = tuple(value for _, value in self._processing_cells())
        pushdown = shares_database(self.sql_conn_id, self.state_conn_id, store.conn)
        conn = store.conn if pushdown else source_hook.get_conn()
        share = self._share(wanted, key_index)
        sql = share.staged_query(conn) if stage else share.query(conn)
        if sql is None:
            if not pushdown:
                conn.close()
            return None
        if pushdown:
            return PushdownModel(
                store,
                sql,
                wanted,
                self.fetch_size,
                constants=constants,
                mapped=len(self.mapping),
                # A large diff is split over a second connection (two cores); a partitioned sync's tasks
                # already share the cores between them.
                connect=source_hook.get_conn if self.partitions == 1 else None,
            )
        return ModelQuery(conn, sql, wanted, self.fetch_size, constants=constants, mapped=len(self.mapping))

    def _share(self, wanted: list[str], key_index: int, shares: ShareRecorder | None = None) -> Share:
        """This task's share of the model's query. A full refresh (partition 0's) reads the whole model:
        a dry run plans it against the whole audience; a replace notes each row's partition in ``shares``.

        :param wanted: the columns to read.
        :param key_index: the position of the EXTERN_ID column among them.
        """
        partitions = 1 if self.full_refresh and shares is None else self.partitions
        return Share(self.sql, wanted, key_index, self.partition, partitions, self.fetch_size)

    def _read_chunks(
        self, source_hook: DbApiHook, key_index: int, shares: ShareRecorder | None = None
    ) -> Iterator[list[tuple[Any, ...]]]:
        """The query's rows in chunks: mapped columns in mapping order, then membership.

        A partition reads only its share: the query is wrapped in the dialect's hash filter, so the
        warehouse does the filtering; a dialect without one is filtered here, row by row. A full refresh
        reads every row, and notes each one's partition in ``shares``.

        :param key_index: the position of the EXTERN_ID column among the mapped columns.
        :param shares: where a full refresh notes each row's partition.
        """
        wanted = self._wanted_columns()
        constants = tuple(value for _, value in self._processing_cells())
        mapped = len(self.mapping)
        conn = source_hook.get_conn()
        try:
            for chunk in self._share(wanted, key_index, shares).read(conn, shares):
                # The sync-wide data processing options go after the mapped cells; membership stays last.
                yield [(*row[:mapped], *constants, *row[mapped:]) for row in chunk] if constants else chunk
        finally:
            conn.close()

    def _processing_cells(self) -> list[tuple[str, Any]]:
        """The sync-wide data processing options, as constant cells after the mapped columns."""
        options = self.data_processing_options
        if options is None:
            return []
        if not options:  # an explicit "none"
            return [(PROCESSING_KEYS[0], "")]
        location = (self.data_processing_options_country, self.data_processing_options_state)
        return list(zip(PROCESSING_KEYS, ("LDU", *location), strict=True))
