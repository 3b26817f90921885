"""A database driver's refusals told without the rows' values, which their messages quote.

PostgreSQL quotes the row it refuses: a value in the message (``invalid input syntax for type integer:
"..."``), the whole row in a ``DETAIL`` line (``Failing row contains (...)``) and the copied line in a
``CONTEXT`` line. The rows a run copies hold EXTERN_IDs and the identifiers Meta takes unhashed (MADID,
APPUID, PAGEUID), and the model's query that a run diffs in the database reads raw cells, so such a
message in the task's log, or in the exception Airflow records, would leak them.

- A refused ``COPY`` (:func:`copy_rows`), or a refused write of the state's rows in multi-row statements
  (:func:`.multirow.write_rows`: state upserts, journal pages, owed identifiers), is raised again as the
  same error class, its message made of what names no value: the SQLSTATE, the table, the column, the
  constraint and the fix (:func:`without_values`).
- So is a refusal of the journal's own statements on PostgreSQL (a page's packed row, the keys of rows
  written ahead, reconciling's ``INSERT ... SELECT``): :func:`journal_writes_without_values` wraps the
  method, its ``try`` costing nothing until the driver raises.
- A model's query that fails in the database while a run diffs it (:func:`model_query_error`) becomes a
  :class:`~.source.ModelReadError` with the driver's first line, its quoted texts replaced by their length
  (as a failed fetch is told, :func:`.source.describe_fetch_error`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

if TYPE_CHECKING:  # .source imports the state, whose writes copy through this module
    from airflow_provider_fbca.sync.source import ModelReadError

#: The modules of the drivers whose errors may quote a row (the tested dialects and the designed ones).
DRIVER_MODULES = ("psycopg", "psycopg2", "sqlite3", "snowflake", "google", "redshift_connector", "databricks")

#: What to do, by SQLSTATE class (its first two characters); see :func:`refusal_hint`.
_HINTS = {
    "22": (
        "a value does not fit its column. If the table was altered by hand or made by another tool, point "
        "state_table at a new table (the provider creates it); otherwise report it with this SQLSTATE."
    ),
    "23": (
        "a row breaks a constraint of the table. If the table was altered by hand or made by another tool, "
        "point state_table at a new table (the provider creates it); otherwise report it with this SQLSTATE."
    ),
}
_NUL_HINT = (
    "a value holds a NUL character (0x00), which PostgreSQL text cannot store: remove it in the model's "
    "query (e.g. replace(column, chr(0), '')) or reject such rows upstream."
)
_BAD_ENCODING = "22021"  # character_not_in_repertoire
_OTHER_HINT = "rerun the task; if it fails again, the SQLSTATE names the database's problem."
#: The attribute marking a refusal already told without values (see :func:`is_redacted`).
_REDACTED = "fbca_without_values"

T = TypeVar("T")
P = ParamSpec("P")
S = TypeVar("S")


def copy_rows(
    cursor: Any,
    table: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    binary_types: Sequence[str] | None = None,
) -> None:
    """``COPY`` rows into a table through a psycopg cursor; a refusal is raised without the rows' values.

    :param cursor: a psycopg 3 cursor (its transaction stays open; a refusal aborts it).
    :param table: the table (quoted as needed).
    :param columns: the columns the rows hold, in order.
    :param rows: the rows' values.
    :param binary_types: the columns' PostgreSQL types (``text``, ``int4``...): copy in binary format,
        which the server reads without parsing text and psycopg writes without escaping it. None: text.
    :raises psycopg.Error: the driver's or the server's refusal, of the class it had, with a message that
        quotes no value (:func:`redacted`).
    """

    def copy_all() -> None:
        binary = " (FORMAT BINARY)" if binary_types else ""
        with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN{binary}") as copy:
            if binary_types:
                copy.set_types(binary_types)
            for row in rows:
                copy.write_row(row)

    without_values(copy_all, table, "COPY")


def without_values(write: Callable[[], T], table: str, action: str) -> T:
    """Run a write of rows; a database driver's refusal is raised without the rows' values.

    :param write: writes the rows (its transaction stays open; a refusal aborts it).
    :param table: the table written.
    :param action: what the write is, for the message (``COPY``, ``multi-row INSERT``...).
    :raises Exception: the driver's or the server's refusal, of the class it had, with a message that
        quotes no value (:func:`redacted`); any other error as it was.
    """
    try:
        return write()
    except Exception as error:
        if not from_driver(error):
            raise
        refusal = redacted(error, table, action)
    raise refusal  # here, not in the handler: the original is not even its context


def journal_writes_without_values(
    action: str,
) -> Callable[[Callable[Concatenate[S, P], T]], Callable[Concatenate[S, P], T]]:
    """Decorate a method of the write-ahead journal (its ``self.store`` a ``StateStore``) whose statements
    write rows: on PostgreSQL, a refusal is raised without the rows' values (:func:`redacted`, the table
    named by the server). SQLite's messages name columns, never values, and stay as they are.

    :param action: what the method writes, for the message (``journal page INSERT``...).
    """

    def decorate(method: Callable[Concatenate[S, P], T]) -> Callable[Concatenate[S, P], T]:
        @functools.wraps(method)
        def wrapped(journal: S, *args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return method(journal, *args, **kwargs)
            except Exception as error:
                if not (journal.store.is_postgres and from_driver(error)) or is_redacted(error):  # type: ignore[attr-defined]
                    raise
                refusal = redacted(error, None, action)
            raise refusal  # here, not in the handler: the original is not even its context

        return wrapped

    return decorate


def redacted(error: Exception, table: str | None, action: str = "COPY") -> Exception:
    """The driver's error again, its message naming the SQLSTATE, the table's column and constraint and
    the fix, never a value of the row.

    :param error: a psycopg error raised by a write of rows.
    :param table: the table written; None for the one the server names (a statement writing several).
    :param action: what the write was (``COPY``, ``multi-row INSERT``...).
    """
    sqlstate = getattr(error, "sqlstate", None)
    diag = getattr(error, "diag", None)
    named = [
        f"{name} {value}"
        for name, value in (
            ("column", getattr(diag, "column_name", None)),
            ("constraint", getattr(diag, "constraint_name", None)),
            ("type", getattr(diag, "datatype_name", None)),
        )
        if value
    ]
    table = table or getattr(diag, "table_name", None) or "the state's tables"
    where = table + (f" ({', '.join(named)})" if named else "")
    message = (
        f"PostgreSQL refused the {action} of this run's rows into {where}: {type(error).__name__}"
        f"{f', SQLSTATE {sqlstate}' if sqlstate else ''}. Its own message is left out: it quotes the row's "
        f"values, which may be personal data. Fix: {refusal_hint(error)}"
    )
    refusal = type(error)(message)
    setattr(refusal, _REDACTED, True)
    return refusal


def is_redacted(error: BaseException) -> bool:
    """Whether the error is a refusal :func:`redacted` already told (a nested write's)."""
    return getattr(error, _REDACTED, False)


def refusal_hint(error: Exception) -> str:
    """What to do about a refused write of rows, from its SQLSTATE (or, for the driver's own, its kind)."""
    sqlstate = getattr(error, "sqlstate", None)
    if sqlstate is None and "NUL (0x00)" in str(error):  # the driver's, refusing a text parameter
        return _NUL_HINT
    # The server's, reading a binary COPY's text: "invalid byte sequence for encoding ...: 0x00" (a
    # Python string's only byte that is not valid text).
    primary = getattr(getattr(error, "diag", None), "message_primary", None) or ""
    if sqlstate == _BAD_ENCODING and primary.endswith(": 0x00"):
        return _NUL_HINT
    return _HINTS.get((sqlstate or "")[:2], _OTHER_HINT)


def from_driver(error: BaseException) -> bool:
    """Whether a database driver raised the error (see :data:`DRIVER_MODULES`)."""
    return type(error).__module__.split(".")[0] in DRIVER_MODULES


def model_query_error(error: Exception) -> ModelReadError:
    """The error to raise for a driver's failure on the model's query, run in the database by a diff.

    :param error: the driver's error (e.g. a cast in the query that a cell fails).
    """
    from airflow_provider_fbca.sync.source import ModelReadError, redact_quoted

    first_line = str(error).splitlines()[0] if str(error) else ""
    return ModelReadError(
        f"Running the model's query in the database failed ({type(error).__name__}: "
        f"{redact_quoted(first_line)}; the rest of the driver's message is left out, as it may quote the "
        "row). Fix or filter out the value the query fails on (a cast or a function that some cell breaks)."
    )
