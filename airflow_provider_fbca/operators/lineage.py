"""OpenLineage for SyncAudienceOperator: the query's tables in, the audience out.

Used only when ``apache-airflow-providers-openlineage`` is installed (the ``openlineage`` extra); every
OpenLineage import is made inside these functions. The inputs come from common-sql's SQL parser with the
SQL connection's namespace (``postgres://host:5432``, ...); the output dataset is the audience, namespace
``facebook-custom-audiences://<act_ad account>`` and the audience id as name (:mod:`airflow_provider_fbca.
assets`), with the run's counts as a facet. Lineage carries table names, ids and counts, never a value.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_fbca.assets import audience_namespace, run_counts

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.providers.openlineage.sqlparser import DatabaseInfo

# SQLite's hook describes no database to OpenLineage; name its tables after the database file.
_SQLITE_SCHEME = "sqlite"
_SQLITE_DATABASE = "main"
COUNTS_FACET = "facebookCustomAudienceSync"


def query_lineage(sql: str, hook: DbApiHook) -> OperatorLineage:
    """
    The lineage of the query alone: the tables it reads, in the connection's namespace.

    Empty (no datasets) when the hook names no database for OpenLineage and is not SQLite, as common-sql's
    operators do.

    :param sql: the rendered query.
    :param hook: the SQL connection's hook.
    """
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.providers.openlineage.sqlparser import SQLParser

    connection = hook.get_connection(getattr(hook, hook.conn_name_attr))
    database_info = hook.get_openlineage_database_info(connection) or _sqlite_database_info(connection)
    if database_info is None:
        return OperatorLineage()
    # SQLite has no information schema to enrich the tables from, and its only schema is the database
    # name ("main"); other databases are asked, with their hook's default schema.
    is_sqlite = database_info.scheme == _SQLITE_SCHEME
    parser = SQLParser(
        dialect=hook.get_openlineage_database_dialect(connection),
        default_schema=_SQLITE_DATABASE if is_sqlite else hook.get_openlineage_default_schema(),
    )
    uses_connection = not is_sqlite
    return parser.generate_openlineage_metadata_from_sql(
        sql=sql,
        hook=hook,
        database_info=database_info,
        sqlalchemy_engine=hook.get_sqlalchemy_engine() if uses_connection else None,
        use_connection=uses_connection,
    )


def _sqlite_database_info(connection: Any) -> DatabaseInfo | None:
    """``sqlite://<database file>``: the file is what tells two SQLite databases apart."""
    if connection.conn_type != _SQLITE_SCHEME:
        return None
    from airflow.providers.openlineage.sqlparser import DatabaseInfo

    return DatabaseInfo(scheme=_SQLITE_SCHEME, authority=connection.host)


def sync_lineage(query: OperatorLineage, ad_account_id: str, report: Mapping[str, Any]) -> OperatorLineage:
    """
    The lineage of a finished sync: the query's inputs, and the audience as output with the run's counts.

    A dry run (or a run that never reached an audience) wrote nothing, and reports no output.

    :param query: the query's lineage (:func:`query_lineage`).
    :param ad_account_id: the ad account synced into.
    :param report: the sync's report.
    """
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import Dataset

    if report.get("dry_run") or not report.get("audience_id"):
        return OperatorLineage(inputs=query.inputs, run_facets=query.run_facets, job_facets=query.job_facets)
    facet = _counts_facet_class()(mode=str(report.get("mode", "")), counts=run_counts(dict(report)))
    audience = Dataset(
        namespace=audience_namespace(ad_account_id),
        name=str(report["audience_id"]),
        facets={COUNTS_FACET: facet},
    )
    return OperatorLineage(
        inputs=query.inputs, outputs=[audience], run_facets=query.run_facets, job_facets=query.job_facets
    )


@functools.cache
def _counts_facet_class() -> type:
    """The dataset facet holding a run's counts; built on first use, as OpenLineage is optional."""
    import attr
    from openlineage.client.generated.base import DatasetFacet

    @attr.define
    class FacebookCustomAudienceSyncDatasetFacet(DatasetFacet):
        """What one sync did to the audience: its mode and counts (rows read, added, removed, ...)."""

        mode: str = ""
        counts: dict[str, int] = attr.field(factory=dict)

    return FacebookCustomAudienceSyncDatasetFacet
