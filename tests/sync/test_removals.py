"""The prefilters of the state rows that may hold a removal identifier: SQLite's (:class:`.may_hold.MayHold`)
and PostgreSQL's (in SQL).

A prefilter may let a non-holder through (the exact join settles it) but must never drop a holder,
whatever the schema or the stored form of the row. End to end, on SQLite and PostgreSQL:
``tests/operators/test_sync_removals.py``.
"""

from __future__ import annotations

import pytest

from airflow_provider_fbca.sync.journal import ADD, REMOVE, PageJournal
from airflow_provider_fbca.sync.may_hold import MayHold
from airflow_provider_fbca.sync.partitions import partition_keys
from airflow_provider_fbca.sync.removals import Removals
from airflow_provider_fbca.sync.state import (
    UNCONFIRMED,
    StagedRow,
    StageTable,
    StateStore,
    encode_identifiers,
)

SHARED = "f" * 64  # a hashed e-mail two people share


def test_a_holder_passes_whatever_the_position_of_the_key_in_its_schema() -> None:
    may_hold = MayHold({"EMAIL"}, expected=1)
    may_hold.add([SHARED])
    assert may_hold.check("EXTERN_ID,EMAIL,PHONE", encode_identifiers(["k1", SHARED, "a" * 64])) == 1
    # A row of an older mapping: another schema, the e-mail elsewhere; then the first schema again.
    assert may_hold.check("EXTERN_ID,PHONE,FN,EMAIL", encode_identifiers(["k2", "", "b" * 64, SHARED])) == 1
    assert may_hold.check("EXTERN_ID,EMAIL,PHONE", encode_identifiers(["k3", SHARED, ""])) == 1


def test_a_holder_stored_as_json_passes() -> None:
    may_hold = MayHold({"MADID"}, expected=1)
    may_hold.add(["device\x1fwith a separator"])
    stored = encode_identifiers(["k1", "device\x1fwith a separator"])
    assert stored.startswith("\x1e")  # the rare JSON form
    assert may_hold.check("EXTERN_ID,MADID", stored) == 1


def test_rows_without_a_withheld_key_of_the_removals_are_dropped() -> None:
    may_hold = MayHold({"EMAIL"}, expected=1)
    may_hold.add([SHARED])
    # The value sits under a key the removals do not carry (or that is never withheld): not a holder.
    assert may_hold.check("EXTERN_ID,PHONE", encode_identifiers(["k1", SHARED])) == 0
    assert may_hold.check("EXTERN_ID,FN", encode_identifiers(["k2", SHARED])) == 0
    assert may_hold.check("EXTERN_ID", encode_identifiers([SHARED])) == 0


def test_a_schema_s_own_check_agrees_with_the_general_one() -> None:
    """SQLite checks the rows of the removals' schemas by a function of each schema's: same answers."""
    may_hold = MayHold({"EMAIL", "PHONE"}, expected=1)
    may_hold.add([SHARED])
    rows = {
        "EXTERN_ID,EMAIL,PHONE": [["k1", SHARED, ""], ["k2", "a" * 64, SHARED], ["k3", "a" * 64], ["k4"]],
        "EXTERN_ID,FN,PHONE": [["k5", SHARED, "b" * 64], ["k6", "c" * 64, SHARED], ["k\x1f7", "", SHARED]],
        "EXTERN_ID,FN": [["k8", SHARED]],
    }
    answers = []
    for key_schema, values in rows.items():
        check = may_hold.checker(key_schema)
        for row in values:
            stored = encode_identifiers(row)
            answers.append(check(stored))
            assert answers[-1] == may_hold.check(key_schema, stored)
    assert answers == [1, 1, 0, 0, 0, 1, 1, 0]


def test_the_table_grows_with_the_removals_and_stays_bounded() -> None:
    assert len(MayHold({"EMAIL"}, expected=10).flags) == 1 << 16
    assert len(MayHold({"EMAIL"}, expected=100_000).flags) == 1 << 23
    assert len(MayHold({"EMAIL"}, expected=10**9).flags) == 1 << 23


def test_only_the_withheld_positions_are_read_whatever_the_row_length() -> None:
    may_hold = MayHold({"PHONE"}, expected=1)
    may_hold.add([SHARED])
    # The value last in its row, then followed by more values: a holder either way.
    assert may_hold.check("EXTERN_ID,EMAIL,PHONE", encode_identifiers(["k1", "a" * 64, SHARED])) == 1
    assert may_hold.check("EXTERN_ID,PHONE,FN", encode_identifiers(["k2", SHARED, "b" * 64])) == 1
    # The value after the withheld position, or a row shorter than its schema: no holder.
    assert may_hold.check("EXTERN_ID,PHONE,FN", encode_identifiers(["k3", "c" * 64, SHARED])) == 0
    assert may_hold.check("EXTERN_ID,EMAIL,PHONE", encode_identifiers(["k4", SHARED])) == 0


#: How the holders are found: probing the state, or (past the values worth probing) the exact join alone.
_PROBED = ("probed", "too-many-values-to-probe")


@pytest.mark.parametrize(
    ("store", "holders"),
    [
        *(("sqlite", holders) for holders in _PROBED),
        *(pytest.param("postgres", holders, marks=pytest.mark.postgres) for holders in _PROBED),
    ],
    indirect=["store"],
)
def test_holders_of_an_older_schema_or_stored_as_json_withhold_what_they_share(
    store: StateStore, holders: str
) -> None:
    """One removal row (schema A) whose e-mail a JSON-stored row holds, and whose phone a row of an older
    mapping holds at another position: both withheld. Another removal row's e-mail, held only as a phone,
    is not. The same when PostgreSQL has more removal values than its holders' scan probes (the exact join
    then reads the state)."""
    schema_a, schema_b = "EXTERN_ID,EMAIL,PHONE", "EXTERN_ID,PHONE,EMAIL"
    email, phone, other, email2, phone2 = "e" * 64, "p" * 64, "o" * 64, "e2" * 32, "p2" * 32
    _store_rows(
        store,
        [
            (schema_a, ["r", email, phone], 1),
            (schema_b, ["old", phone, other], 1),
            (schema_a, ["j\x1fk", email, other], 1),
            (schema_a, ["swap", other, email2], 1),
            (schema_a, ["gone", other, phone], 0),
        ],
    )
    stage = StageTable(store)
    stage.create()
    store.execute(
        f"INSERT INTO {stage.name} (row_key, member, in_state, old_id_digest, old_key_schema, old_identifiers,"
        " old_member, to_remove) VALUES ('r', 0, 1, 'd', ?, ?, 1, 1), ('r2', 0, 1, 'd', ?, ?, 1, 1)",
        (
            schema_a,
            encode_identifiers(["r", email, phone]),
            schema_a,
            encode_identifiers(["r2", email2, phone2]),
        ),
    ).close()
    store.commit()
    removals = Removals(store, stage, "s")
    if holders == "too-many-values-to-probe":
        removals.probed_values_limit = 3  # the removal rows carry 4 values
    assert removals.build() == 2
    assert _table_exists(store, removals.holders) == (
        holders != "too-many-values-to-probe" or store.is_sqlite
    )
    (page,) = removals.pages(schema_a, 10)
    sent = [encode_identifiers(["r", "", ""]), encode_identifiers(["r2", email2, phone2])]
    assert [row.sent for row in page] == sent
    removals.drop()
    stage.drop()


def _store_rows(store: StateStore, rows: list[tuple[str, list[str], int]], sync_key: str = "s") -> None:
    """A sync's state (``s``'s by default): ``(key_schema, identifiers, member)``, the EXTERN_ID first."""
    store.ensure_tables()
    store.upsert(
        sync_key,
        [
            StagedRow(ids[0], "f", "d", schema, encode_identifiers(ids), member)
            for schema, ids, member in rows
        ],
    )


def _stage_rows(
    store: StateStore, rows: list[tuple[str, int, int, str, list[str], list[str] | None]]
) -> StageTable:
    """A planned stage: ``(row_key, member, to_add, key_schema, old identifiers, new identifiers or None)``,
    each row in the state before and removed with its old identifiers."""
    stage = StageTable(store)
    stage.create()
    for row_key, member, to_add, key_schema, old, new in rows:
        store.execute(
            f"INSERT INTO {stage.name} (row_key, member, in_state, id_digest, key_schema, identifiers,"
            " old_id_digest, old_key_schema, old_identifiers, old_member, to_add, to_remove)"
            " VALUES (?, ?, 1, 'n', ?, ?, 'd', ?, ?, 1, ?, 1)",
            (
                row_key,
                member,
                key_schema if new else None,
                encode_identifiers(new) if new else None,
                key_schema,
                encode_identifiers(old),
                to_add,
            ),
        ).close()
    store.commit()
    return stage


def test_values_the_additions_hold_and_values_staying_rows_hold_are_both_withheld(store: StateStore) -> None:
    """A person changes e-mail and keeps their phone (held by their own addition); a person leaves whose
    e-mail a staying member holds (found in the state), and whose phone nobody holds. Withheld: the kept
    phone and the shared e-mail, whichever way each is found; the old e-mail and the lone phone are sent."""
    schema = "EXTERN_ID,EMAIL,PHONE"
    old_email, new_email, kept_phone, shared, lone_phone = "o" * 64, "n" * 64, "k" * 64, "s" * 64, "l" * 64
    _store_rows(
        store,
        [
            (schema, ["moves", old_email, kept_phone], 1),
            (schema, ["leaves", shared, lone_phone], 1),
            (schema, ["stays", shared, "x" * 64], 1),
        ],
    )
    stage = _stage_rows(
        store,
        [
            ("leaves", 0, 0, schema, ["leaves", shared, lone_phone], None),
            ("moves", 1, 1, schema, ["moves", old_email, kept_phone], ["moves", new_email, kept_phone]),
        ],
    )
    removals = Removals(store, stage, "s")
    assert removals.build() == 2
    (page,) = removals.pages(schema, 10)
    sent = [encode_identifiers(["leaves", "", lone_phone]), encode_identifiers(["moves", old_email, ""])]
    assert [row.sent for row in page] == sent
    removals.drop()
    stage.drop()


def test_no_state_scan_when_the_additions_hold_every_withheld_value(store: StateStore) -> None:
    """People re-identified by a new name keep their e-mail and phone: their additions hold every strong
    value the removal rows carry, so no state row is read for holders (a staying member holding the same
    e-mail changes nothing), and both values are withheld."""
    schema = "EXTERN_ID,EMAIL,PHONE,FN"
    email, phone = "e" * 64, "p" * 64
    _store_rows(
        store, [(schema, ["renamed", email, phone, "a" * 64], 1), (schema, ["stays", email, "x" * 64, ""], 1)]
    )
    old, new = ["renamed", email, phone, "a" * 64], ["renamed", email, phone, "b" * 64]
    stage = _stage_rows(store, [("renamed", 1, 1, schema, old, new)])
    removals = Removals(store, stage, "s")
    assert removals.build() == 2
    assert not _table_exists(store, removals.holders)
    (page,) = removals.pages(schema, 10)
    assert [row.sent for row in page] == [encode_identifiers(["renamed", "", "", "a" * 64])]
    removals.drop()
    stage.drop()


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_the_holders_scan_probes_the_removal_values_as_constants_whatever_the_work_mem(
    store: StateStore,
) -> None:
    """4,000 removal values (2,000 rows, an e-mail and a phone each) would not fit a hash in the session's
    64 kB of work_mem: probed as a subquery of their table, the planner would compare each state row with
    every value in turn (hours at a million rows) or need the memory. The holders' scan (its plan, by
    auto_explain, told to this client) probes them as an array constant, which PostgreSQL hashes outside
    work_mem; the session's setting is left as it was."""
    schema = "EXTERN_ID,EMAIL,PHONE"
    store.ensure_tables()
    store.upsert(
        "s", [StagedRow("stay", "f", "d", schema, encode_identifiers(["stay", "e" * 64, "p" * 64]), 1)]
    )
    stage = StageTable(store)
    stage.create()
    store.execute(
        f"INSERT INTO {stage.name} (row_key, member, in_state, old_id_digest, old_key_schema, old_identifiers,"
        " old_member, to_remove) SELECT 'k' || i, 0, 1, 'd', %s, 'k' || i || chr(31) || md5('e' || i)"
        " || md5('e' || i) || chr(31) || md5('p' || i) || md5('p' || i), 1, 1 FROM generate_series(1, 2000) AS i",
        (schema,),
    ).close()
    store.commit()
    store.execute("SET work_mem = '64kB'").close()
    removals, holders_plan, _ = _built_with_plans(store, stage, withheld=0)
    assert "SubPlan" not in holders_plan
    assert holders_plan.count("::text[]") == 2  # the e-mail's and the phone's probes
    assert store.fetch_one("SHOW work_mem") == ("64kB",)
    removals.drop()
    stage.drop()


def test_a_value_only_a_non_member_holds_is_removed(store: StateStore) -> None:
    """A leaving person's e-mail is also held by a row whose membership column took it out of the audience
    (stored, not a member): nobody staying holds it, so the removal row carries it. Their phone, held by a
    member, is withheld."""
    schema = "EXTERN_ID,EMAIL,PHONE"
    email, phone = "e" * 64, "p" * 64
    _store_rows(
        store,
        [
            (schema, ["leaves", email, phone], 1),
            (schema, ["out", email, "x" * 64], 0),
            (schema, ["stays", "y" * 64, phone], 1),
        ],
    )
    stage = _stage_rows(store, [("leaves", 0, 0, schema, ["leaves", email, phone], None)])
    removals = Removals(store, stage, "s")
    assert removals.build() == 1
    (page,) = removals.pages(schema, 10)
    assert [row.sent for row in page] == [encode_identifiers(["leaves", email, ""])]
    removals.drop()
    stage.drop()


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_the_holders_scan_probes_only_the_values_no_addition_holds(store: StateStore) -> None:
    """A person changes e-mail and keeps their phone: their addition holds the phone, so the scan of the
    state (its plan, by auto_explain, told to this client) probes the e-mail's position alone, and finds
    the staying member who shares the old e-mail. Both values are withheld."""
    schema = "EXTERN_ID,EMAIL,PHONE"
    old_email, new_email, phone = "o" * 64, "n" * 64, "p" * 64
    _store_rows(
        store, [(schema, ["moves", old_email, phone], 1), (schema, ["stays", old_email, "x" * 64], 1)]
    )
    stage = _stage_rows(
        store, [("moves", 1, 1, schema, ["moves", old_email, phone], ["moves", new_email, phone])]
    )
    removals, holders_plan, _ = _built_with_plans(store, stage, withheld=2)
    assert holders_plan.count("::text[]") == 1  # the e-mail's probe; the phone is not looked for
    (page,) = removals.pages(schema, 10)
    assert [row.sent for row in page] == [encode_identifiers(["moves", "", ""])]
    removals.drop()
    stage.drop()


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_the_holders_scan_looks_for_each_value_at_its_own_key_s_positions(store: StateStore) -> None:
    """A person leaves; a staying member holds their e-mail's value as a phone, nothing as an e-mail. The
    scan keeps the rows holding a removal value at that value's key (the leaving row itself), not the one
    holding it at another key's position, which the exact join would drop anyway: nothing is withheld."""
    schema = "EXTERN_ID,EMAIL,PHONE"
    email, phone = "e" * 64, "p" * 64
    _store_rows(store, [(schema, ["leaves", email, phone], 1), (schema, ["crossed", "x" * 64, email], 1)])
    stage = _stage_rows(store, [("leaves", 0, 0, schema, ["leaves", email, phone], None)])
    removals = Removals(store, stage, "s")
    assert removals.build() == 0
    assert store.fetch_all(f"SELECT row_key FROM {removals.holders}") == [("leaves",)]
    (page,) = removals.pages(schema, 10)
    assert [row.sent for row in page] == [encode_identifiers(["leaves", email, phone])]
    removals.drop()
    stage.drop()


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_the_holders_scan_runs_without_jit_and_leaves_the_session_s_setting(store: StateStore) -> None:
    """Priced as keeping every state row, the holders' scan of a large state passes ``jit_above_cost``, and
    PostgreSQL would compile it first in each process (tens of ms at a million rows). A session whose
    statements all pass it (``jit_above_cost = 0``) stands for that state: the scan's plan (by
    auto_explain, told to this client) has no JIT, it finds the holder as before, and the session's own
    setting is back once the removals' transaction ends."""
    schema = "EXTERN_ID,EMAIL,PHONE"
    email, phone = "e" * 64, "p" * 64
    _store_rows(store, [(schema, ["leaves", email, phone], 1), (schema, ["stays", email, "x" * 64], 1)])
    stage = _stage_rows(store, [("leaves", 0, 0, schema, ["leaves", email, phone], None)])
    store.execute("SET jit = on").close()
    store.execute("SET jit_above_cost = 0").close()
    removals, holders_plan, plans = _built_with_plans(store, stage, withheld=1)
    assert "JIT" not in holders_plan
    assert any("JIT" in plan for plan in plans)  # the session's other statements are still compiled
    assert store.fetch_one("SHOW jit") == ("on",)
    (page,) = removals.pages(schema, 10)
    assert [row.sent for row in page] == [encode_identifiers(["leaves", "", phone])]
    removals.drop()
    stage.drop()


def _built_with_plans(
    store: StateStore, stage: StageTable, *, withheld: int
) -> tuple[Removals, str, list[str]]:
    """Build a run's removals (``withheld`` identifiers withheld) while PostgreSQL tells this client its plans:
    the removals, the holders' scan's plan and every statement's."""
    plans = _explained(store)
    removals = Removals(store, stage, "s")
    assert removals.build() == withheld
    (holders_plan,) = [plan for plan in plans if f"CREATE TEMPORARY TABLE {removals.holders}" in plan]
    return removals, holders_plan, plans


def _explained(store: StateStore) -> list[str]:
    """PostgreSQL: the plans of the statements the connection runs from now on (auto_explain's notices)."""
    plans: list[str] = []
    store.conn.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
    store.execute("LOAD 'auto_explain'").close()
    for setting in ("auto_explain.log_min_duration = 0", "auto_explain.log_level = notice"):
        store.execute(f"SET {setting}").close()
    store.commit()
    return plans


def _table_exists(store: StateStore, name: str) -> bool:
    if store.is_sqlite:
        return bool(store.fetch_one("SELECT 1 FROM sqlite_temp_master WHERE name = ?", (name,)))
    return store.fetch_one("SELECT to_regclass(?)", (f"pg_temp.{name}",))[0] is not None


@pytest.mark.parametrize(
    ("store", "holders"),
    [
        *(("sqlite", holders) for holders in _PROBED),
        *(pytest.param("postgres", holders, marks=pytest.mark.postgres) for holders in _PROBED),
    ],
    indirect=["store"],
)
def test_a_partition_withholds_what_the_other_slices_hold_and_nothing_else(
    store: StateStore, holders: str
) -> None:
    """Partition 0 of 3 removes a person whose e-mail a member of slice 1 holds, whose phone a row written
    ahead of its page by slice 2's first sync holds, and whose mobile advertiser id a pending addition page
    of slice 1 holds; the second person's e-mail only a non-member of slice 2, a member of another sync and
    a member of the same audience's 2-partition layout hold: it is sent."""
    schema = "EXTERN_ID,EMAIL,PHONE,MADID"
    email, phone, madid, lone = "e" * 64, "p" * 64, "m" * 64, "l" * 64
    own, one, two = (f"s#p{k}of3" for k in range(3))
    _store_rows(
        store, [(schema, ["leaves", email, phone, madid], 1), (schema, ["lone", lone, "q", "r"], 1)], own
    )
    _store_rows(store, [(schema, ["kept", email, "x", "y"], 1)], one)
    _store_rows(store, [(schema, ["out", lone, "x", "y"], 0)], two)
    _store_rows(store, [(schema, ["elsewhere", lone, "x", "y"], 1)], "t#p1of3")
    _store_rows(store, [(schema, ["other layout", lone, "x", "y"], 1)], "s#p1of2")
    row = StagedRow("ahead", "f", "d", schema, encode_identifiers(["ahead", "z", phone, "w"]), 1)
    PageJournal(store, two).record_new(7, 1, [row])
    pending = ("joins", schema, encode_identifiers(["joins", "z", "w", madid]), "d")
    PageJournal(store, one).record(ADD, 8, 1, [pending])
    PageJournal(store, one).record(
        REMOVE, 8, 2, [("kept", schema, encode_identifiers(["kept", lone, "", ""]), "d")]
    )
    stage = _stage_rows(
        store,
        [
            ("leaves", 0, 0, schema, ["leaves", email, phone, madid], None),
            ("lone", 0, 0, schema, ["lone", lone, "q", "r"], None),
        ],
    )
    removals = Removals(store, stage, own)
    if holders == "too-many-values-to-probe":
        removals.probed_values_limit = 1
    assert removals.build() == 3
    (page,) = removals.pages(schema, 10)
    sent = [encode_identifiers(["leaves", "", "", ""]), encode_identifiers(["lone", lone, "q", "r"])]
    assert [row.sent for row in page] == sent
    removals.drop()
    stage.drop()


def test_a_partition_s_sync_keys_are_every_partition_s_its_own_first() -> None:
    assert partition_keys("act_1:9#p2of3") == ["act_1:9#p2of3", "act_1:9#p0of3", "act_1:9#p1of3"]
    assert partition_keys("act_1:9") == ["act_1:9"]
    assert partition_keys("act_1:9#p02of3") == ["act_1:9#p02of3"]  # not a partition's spelling


@pytest.mark.parametrize("acknowledged", [True, False], ids=["acknowledged", "never-answered"])
def test_a_partition_waits_for_an_addition_racing_its_removal_then_has_it_sent_again(
    store: StateStore, acknowledged: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Partition 0 of 2 checks the holders of an e-mail (nobody else holds it) and sends its removal;
    meanwhile partition 1 journals an addition holding it. Once the removal is answered, partition 0 waits
    for that page: answered, the newcomer's state row is marked unconfirmed (partition 1's next run sends
    them again); never answered (partition 1 killed), it gives up after its wait and says so, the page
    staying pending for partition 1's next run to reconcile."""
    schema = "EXTERN_ID,EMAIL,PHONE"
    email, own, one = "e" * 64, "s#p0of2", "s#p1of2"
    _store_rows(store, [(schema, ["leaves", email, "p" * 64], 1)], own)
    _store_rows(store, [(schema, ["old", "o" * 64, "q" * 64], 1)], one)
    stage = _stage_rows(store, [("leaves", 0, 0, schema, ["leaves", email, "p" * 64], None)])
    removals = Removals(store, stage, own)
    assert removals.build() == 0
    newcomer = StagedRow("joins", "f", "n", schema, encode_identifiers(["joins", email, "x" * 64]), 1)
    other = PageJournal(store, one)
    other.record(ADD, 5, 1, [("joins", schema, newcomer.identifiers, newcomer.id_digest)])
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if acknowledged:
            other.added(5, 1, [newcomer])

    with caplog.at_level("WARNING", logger="airflow_provider_fbca.sync.removals"):
        marked = removals.unconfirm_late_holders(sleep=sleep, wait_s=0.6)
    fingerprints = dict(
        store.fetch_all(f"SELECT row_key, fingerprint FROM {store.table} WHERE sync_key = ?", (one,))
    )
    pending = store.fetch_one(f"SELECT COUNT(*) FROM {store.pages_table} WHERE sync_key = ?", (one,))[0]
    if acknowledged:
        assert (marked, len(waits), pending) == (1, 1, 0)
        assert fingerprints == {"old": "f", "joins": UNCONFIRMED}
    else:
        assert (marked, len(waits), pending) == (0, 3, 1)
        assert fingerprints == {"old": "f"}
        assert "still unanswered" in caplog.text and email not in caplog.text
    removals.drop()
    stage.drop()
