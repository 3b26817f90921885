"""A refused COPY or multi-row write is told without the rows' values (PostgreSQL quotes them in its
message)."""

from __future__ import annotations

import traceback
from typing import Any

import pytest

from airflow_provider_fbca.sync.engine import SyncOptions, SyncRun
from airflow_provider_fbca.sync.journal import UPDATE, PageJournal, RemovalRow
from airflow_provider_fbca.sync.pushdown import PushdownModel
from airflow_provider_fbca.sync.source import ModelReadError
from airflow_provider_fbca.sync.state import STAGE_LOAD_COLUMNS, StagedRow, StageTable, StateStore
from tests.sync.conftest import PassThroughPreparer, RecordingAudience

SECRET = "jane.doe@example.com"


def _told(error: BaseException) -> str:
    """Everything a task log shows of an error: its traceback, with its cause and context, and the
    messages and arguments of every error of the chain (which a handler up the stack might log)."""
    told, seen = ["".join(traceback.format_exception(error))], error
    while seen is not None:
        told += [str(seen), repr(seen.args)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(told)


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_a_refused_stage_copy_names_the_fix_not_the_row(store: StateStore) -> None:
    """PostgreSQL's own message would quote the value and its CONTEXT line the whole copied line."""
    import psycopg

    store.ensure_tables()
    stage = StageTable(store)
    stage.create()
    row = (
        SECRET,
        "f",
        "d",
        "EXTERN_ID",
        SECRET,
        SECRET,
        1,
        1,
        1,
        0,
        None,
    )  # a text where member's integer goes
    assert len(row) == len(STAGE_LOAD_COLUMNS)
    with pytest.raises(psycopg.errors.InvalidTextRepresentation) as refused:
        stage.load([row])
    assert SECRET not in _told(refused.value)
    assert "SQLSTATE 22P02" in str(refused.value) and "Fix: a value does not fit its column" in str(
        refused.value
    )
    store.conn.rollback()


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_a_refused_state_copy_names_the_fix_not_the_row(store: StateStore) -> None:
    """A NOT NULL violation's DETAIL line holds the whole failing row: identifiers and all."""
    import psycopg

    store.ensure_tables()
    row = StagedRow(SECRET, None, "d", "EXTERN_ID,MADID", f"{SECRET}\x1fmadid-of-jane", 1, 7)  # type: ignore[arg-type]
    with pytest.raises(psycopg.errors.NotNullViolation) as refused:
        store.upsert("act_1:42", [row], new=True)  # new rows go by COPY
    told = _told(refused.value)
    assert SECRET not in told and "madid-of-jane" not in told
    assert "column fingerprint" in str(refused.value) and "SQLSTATE 23502" in str(refused.value)
    store.conn.rollback()


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_a_key_holding_nul_is_refused_with_the_fix(store: StateStore) -> None:
    """The driver's own refusal (PostgreSQL text holds no NUL) names the fix in the model's query."""
    import psycopg

    store.ensure_tables()
    row = StagedRow("jane\x00doe", "f", "d", "EXTERN_ID", "jane\x00doe", 1, 7)
    with pytest.raises(psycopg.DataError, match=r"replace\(column, chr\(0\), ''\)") as refused:
        store.upsert("act_1:42", [row], new=True)
    assert "jane" not in _told(refused.value)
    store.conn.rollback()


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_a_model_query_failing_on_a_cell_in_the_diff_is_told_without_it(store: StateStore) -> None:
    """A run diffing the model in the database runs its query there: a cast that a cell breaks fails it,
    and PostgreSQL's message quotes the cell."""
    model = f"{store.table_name}_model"
    store.execute(f"CREATE TABLE {model} (id TEXT, email TEXT)").close()
    store.execute(f"INSERT INTO {model} VALUES ('1', '5'), ('2', '6')").close()
    store.conn.commit()

    def sync(cells: str) -> Any:
        options = SyncOptions("42", "act_1:42", source_key_index=0)
        run = SyncRun(store, RecordingAudience(), PassThroughPreparer(("EXTERN_ID", "EMAIL")), options)
        return run.run(PushdownModel(store, f"SELECT id, {cells} AS email FROM {model}", ["id", "email"], 10))

    sync("email")  # the first sync; the next run diffs in the database
    store.execute(f"INSERT INTO {model} VALUES ('3', ?)", (SECRET,)).close()
    store.conn.commit()
    with pytest.raises(
        ModelReadError, match=r"InvalidTextRepresentation: .*<20 characters>.*Fix or filter"
    ) as e:
        sync("CAST(CAST(email AS INTEGER) AS TEXT)")
    assert SECRET not in _told(e.value)


def _refuse_values_of(store: StateStore, table: str) -> None:
    """A CHECK constraint no row naming Jane passes, added as a hand-altered table would have it (not
    validated against the rows there already)."""
    store.execute(
        f"ALTER TABLE {table} ADD CONSTRAINT fbca_refuses_a_person CHECK (position('jane' in identifiers) = 0) NOT VALID"
    ).close()
    store.commit()


def _jane(key: str = SECRET) -> StagedRow:
    return StagedRow(key, "f", "d", "EXTERN_ID,MADID", f"{SECRET}\x1fmadid-of-jane", 1, 7)


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda store: store.upsert("act_1:42", [_jane()]), id="state-upsert"),
        # Rows repeating a key are upserted row by row (executemany): refused the same way.
        pytest.param(
            lambda store: store.upsert("act_1:42", [_jane(), _jane()]), id="state-upsert-row-by-row"
        ),
        pytest.param(
            lambda store: PageJournal(store, "act_1:42").refused(
                3,
                1,
                [RemovalRow(0, SECRET, "EXTERN_ID,MADID", f"{SECRET}\x1fmadid-of-jane", "d", UPDATE, "")],
            ),
            id="owed-identifiers",
        ),
        pytest.param(lambda store: PageJournal(store, "act_1:42").reconcile(), id="journal-pages-unpacked"),
    ],
)
def test_a_refused_multirow_write_names_the_fix_not_the_rows(store: StateStore, write: Any) -> None:
    """A CHECK violation's DETAIL line ("Failing row contains (...)") holds the whole row: its EXTERN_ID
    and identifiers Meta takes unhashed."""
    import psycopg

    store.ensure_tables()
    # A page in flight (packed, as the journal records it): reconciling unpacks it into one row each.
    PageJournal(store, "act_1:42").record(
        "add", 3, 1, [(SECRET, "EXTERN_ID,MADID", f"{SECRET}\x1fmadid", "d")]
    )
    for table in (store.table, store.owed_table, store.pages_table):
        _refuse_values_of(store, table)
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        write(store)
    told = _told(refused.value)
    assert SECRET not in told and "madid-of-jane" not in told
    assert "SQLSTATE 23514" in told and "constraint fbca_refuses_a_person" in told
    assert "Fix: a row breaks a constraint of the table" in str(refused.value)
    store.conn.rollback()


def _jane_page(journal: PageJournal) -> None:
    jane = _jane()  # her values are not in this source line, which a traceback quotes
    journal.record("add", 3, 1, [(jane.row_key, jane.key_schema, jane.identifiers, "d")])


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
@pytest.mark.parametrize(
    ("refusing", "write"),
    [
        # The page's one packed row: its identifiers column holds every row of the page.
        pytest.param("pages", _jane_page, id="journal-record"),
        # The written-ahead rows go by COPY; the page's packed row holds their keys (EXTERN_IDs).
        pytest.param("pages", lambda journal: journal.record_new(3, 1, [_jane()]), id="journal-record-new"),
        # Reconciling folds the pending rows into the state in one INSERT ... SELECT.
        pytest.param("table", lambda journal: journal.reconcile(), id="reconcile-insert-select"),
        # ... and the old identifiers of a member the page would replace into the owed table.
        pytest.param("owed", lambda journal: journal.reconcile(), id="reconcile-owed-insert-select"),
    ],
)
def test_a_refused_journal_statement_names_the_fix_not_the_row(
    store: StateStore, refusing: str, write: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Single-row journal inserts and reconciling's ``INSERT ... SELECT`` are refused by a CHECK added by
    hand: PostgreSQL's DETAIL quotes the failing row, which must reach neither the error nor the log."""
    import psycopg

    store.ensure_tables()
    journal = PageJournal(store, "act_1:42")
    if refusing != "pages":
        # A member under other identifiers (so reconciling owes them), and a page left in flight over it.
        store.upsert("act_1:42", [StagedRow(SECRET, "f", "old", "EXTERN_ID", "jane-old-id", 1, 7)])
        _jane_page(journal)
    _refuse_values_of(store, getattr(store, refusing if refusing == "table" else f"{refusing}_table"))
    caplog.set_level("DEBUG")
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        write(journal)
    told = _told(refused.value) + caplog.text
    assert SECRET not in told and "madid-of-jane" not in told
    assert "SQLSTATE 23514" in told and "constraint fbca_refuses_a_person" in told
    refused_table = getattr(store, refusing if refusing == "table" else f"{refusing}_table").strip('"')
    assert f"into {refused_table} (" in told  # the table the server names
    assert "Fix: a row breaks a constraint of the table" in str(refused.value)
    store.conn.rollback()
