"""RowPreparer / prepare_rows: the operator's hot path over whole batches of typed rows."""

from __future__ import annotations

import hashlib
from datetime import date, datetime
from decimal import Decimal

import pytest

from airflow_provider_fbca.identifiers import (
    DROP_REASONS,
    ROW_NO_IDENTIFIER,
    ROW_NO_VALUE,
    PreparedBatch,
    RowPreparer,
    prepare,
    prepare_rows,
)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_schema_is_meta_names_in_column_order_with_date_of_birth_expanded() -> None:
    preparer = RowPreparer(["external_id", "Email", "dob", "postal_code", "COUNTRY"])
    assert preparer.schema == ("EXTERN_ID", "EMAIL", "DOBY", "DOBM", "DOBD", "ZIP", "COUNTRY")


def test_column_of_counts_input_columns_not_wire_keys() -> None:
    preparer = RowPreparer(["Email", "dob", "postal_code", "external_id"])
    assert preparer.column_of("EXTERN_ID") == 3  # the schema's index would be 5
    assert preparer.column_of("DOBM") == 1
    with pytest.raises(ValueError, match="PHONE"):
        preparer.column_of("PHONE")


def test_wire_rows_equal_prepare_value_by_value() -> None:
    keys = ["EXTERN_ID", "EMAIL", "PHONE", "FN", "LN", "CT", "ST", "ZIP", "COUNTRY", "GEN", "DOBY", "MADID"]
    row = [
        " cust-1 ",
        "Mary@Example.com",
        "(650) 555-1212",
        "Mary",
        "O'Brien",
        "Menlo Park",
        "California",
        94025,
        "US",
        "F",
        1980,
        "6D92078A-8246-4BA4-AE5B-76104861E7DC",
    ]
    batch = prepare_rows(keys, [row])
    assert batch.rows == [
        tuple(prepare(key, value, country="US") for key, value in zip(keys, row, strict=True))
    ]
    assert batch.rows[0][1] == "f1904cf1a9d73a55fa5de0ac823c4403ded71afd4c3248d00bdcd0866552bb79"
    assert batch.kept == [0]
    assert batch.rejected == []
    assert batch.dropped == {}


def test_the_rows_country_drives_phone_zip_and_state_over_the_default() -> None:
    preparer = RowPreparer(["phone", "zip", "state", "country"], default_country="US")
    batch = preparer.prepare_rows(
        [
            ["07700 900123", "SW1A 1AA", "Greater London", "United Kingdom"],
            ["(650) 555-1212", 2134, "New York", None],  # no country: the default (US) decides
            ["(650) 555-1212", 2134, "New York", "Narnia"],  # unusable country: the default decides
            ["030 1234567", "10115", "Berlin", "DEU"],
        ]
    )
    assert [row[:3] for row in batch.rows] == [
        (sha256("447700900123"), sha256("sw1a1"), sha256("greaterlondon")),
        (sha256("16505551212"), sha256("02134"), sha256("ny")),
        (sha256("16505551212"), sha256("02134"), sha256("ny")),
        (sha256("49301234567"), sha256("10115"), sha256("berlin")),
    ]
    assert [row[3] for row in batch.rows] == [sha256("gb"), "", "", sha256("de")]
    assert batch.dropped == {"country.unknown": 1}


def test_without_any_country_national_phones_are_dropped_with_a_reason() -> None:
    batch = prepare_rows(
        ["email", "phone"], [["a@example.com", "(650) 555-1212"], ["b@example.com", "+1 650 555 1212"]]
    )
    assert batch.rows == [(sha256("a@example.com"), ""), (sha256("b@example.com"), sha256("16505551212"))]
    assert batch.dropped == {"phone.no_country_code": 1}


def test_cached_values_do_not_leak_between_countries() -> None:
    # The same ZIP and state cells, prepared for rows of different countries, in one batch.
    batch = prepare_rows(
        ["zip", "state", "country"],
        [
            [2134, "Georgia", "US"],
            [2134, "Georgia", "GE"],
            [2134, "Georgia", "US"],
            ["02134", "Georgia", None],
        ],
    )
    zips = [row[0] for row in batch.rows]
    states = [row[1] for row in batch.rows]
    assert zips == [sha256("02134"), sha256("2134"), sha256("02134"), sha256("02134")]
    assert states == [sha256("ga"), sha256("georgia"), sha256("ga"), sha256("ga")]


def test_date_of_birth_fills_three_keys_from_dates_and_iso_text() -> None:
    batch = prepare_rows(
        ["external_id", "date_of_birth"],
        [
            ["a", date(1997, 2, 16)],
            ["b", datetime(1997, 2, 16, 23, 59)],
            ["c", "1997-02-16"],
            ["d", "19970216"],
            ["e", "1997/2/16"],
            ["f", "1997-02-30"],  # no such day
            ["g", "02/16/1997"],  # month-first or day-first: not guessed
            ["h", None],
        ],
    )
    expected = (sha256("1997"), sha256("02"), sha256("16"))
    assert [row[1:] for row in batch.rows[:5]] == [expected] * 5
    assert batch.rejected == [5, 6, 7]  # nothing but EXTERN_ID survived
    assert batch.dropped == {"dob.invalid": 2}
    assert batch.rejected_by_reason == {"row.no_identifier": 3}


def test_date_of_birth_parts_are_range_checked_like_the_single_keys() -> None:
    batch = prepare_rows(["email", "dob"], [["a@example.com", date(1850, 5, 1)]])
    assert batch.rows == [(sha256("a@example.com"), "", sha256("05"), sha256("01"))]
    assert batch.dropped == {"doby.out_of_range": 1}


def test_one_bad_value_never_fails_the_batch_and_is_counted_by_reason() -> None:
    batch = prepare_rows(
        ["external_id", "email", "phone", "gender", "birth_month", "country"],
        [
            ["1", "not-an-email", "12", "unknown", "13", "Atlantis"],
            ["2", "ok@example.com", "+44 7700 900123", "male", "Feb", "GB"],
            ["3", float("nan"), b"\xff\xfe", "x", object(), ["not", "hashable"]],
        ],
    )
    assert batch.kept == [1]
    assert batch.rejected == [0, 2]
    assert batch.rejected_by_reason == {"row.no_identifier": 2}
    assert batch.dropped == {
        "email.invalid": 1,
        "phone.no_country_code": 1,
        "phone.invalid": 1,
        "gen.unknown": 2,
        "dobm.out_of_range": 1,
        "dobm.invalid": 1,
        "country.unknown": 2,
    }


def test_a_row_with_only_weak_identifiers_is_kept() -> None:
    # Meta matches on combinations (FN + LN + ZIP ...): weak keys still count as identifiers.
    batch = prepare_rows(["external_id", "first_name", "last_name", "zip"], [["1", "Mary", "Smith", "94025"]])
    assert batch.kept == [0]


def test_value_based_rows_need_a_usable_value() -> None:
    batch = prepare_rows(
        ["external_id", "email", "value"],
        [
            ["1", "a@example.com", 44.5],
            ["2", "b@example.com", None],
            ["3", "c@example.com", -3],
            ["4", "", 10],
        ],
    )
    assert batch.rows == [("1", sha256("a@example.com"), "44.5")]
    assert batch.rejected == [1, 2, 3]
    assert batch.rejected_by_reason == {"row.no_value": 2, "row.no_identifier": 1}
    assert batch.dropped == {"lookalike_value.negative": 1}


def test_extern_id_only_schema_is_valid_for_removals() -> None:
    batch = prepare_rows(["external_id"], [["AbC-1"], [None], ["  "]])
    assert batch.rows == [("AbC-1",)]
    assert batch.rejected_by_reason == {"row.no_identifier": 2}


def test_typed_values_and_prehashed_cells_in_a_batch() -> None:
    digest = sha256("mary@example.com")
    batch = prepare_rows(
        ["external_id", "email", "zip", "phone", "birth_year"],
        [[12345.0, digest.upper(), Decimal("2134"), 6505551212, 1980.0]],
        default_country="us",
    )
    assert batch.rows == [("12345", digest, sha256("02134"), sha256("16505551212"), sha256("1980"))]


def test_unknown_keys_duplicates_and_bad_default_country_are_configuration_errors() -> None:
    with pytest.raises(ValueError, match=r"Unknown match key 'mail'.*EMAIL"):
        RowPreparer(["mail"])
    with pytest.raises(ValueError, match="more than once: EMAIL"):
        RowPreparer(["email", "EMAIL"])
    with pytest.raises(ValueError, match="more than once: DOBY"):
        RowPreparer(["birth_year", "date_of_birth"])
    with pytest.raises(ValueError, match="default_country"):
        RowPreparer(["email"], default_country="Narnia")
    with pytest.raises(ValueError, match="at least one"):
        RowPreparer([])


def test_default_country_accepts_codes_and_names() -> None:
    assert RowPreparer(["phone"], default_country="United Kingdom").default_country == "gb"
    assert RowPreparer(["phone"], default_country="USA").default_country == "us"
    assert RowPreparer(["phone"]).default_country is None


def test_a_preparer_is_reusable_across_batches() -> None:
    preparer = RowPreparer(["email", "gender"])
    first = preparer.prepare_rows([["a@example.com", "F"]])
    second = preparer.prepare_rows(iter([["b@example.com", "female"], ["", "bogus"]]))
    assert isinstance(second, PreparedBatch)
    assert first.rows[0][1] == second.rows[0][1] == sha256("f")
    assert second.kept == [0]
    assert second.rejected == [1]
    assert second.dropped == {"gen.unknown": 1}
    assert first.dropped == {}


def test_garbage_of_every_type_never_raises() -> None:
    import random
    import uuid

    rng = random.Random(5)
    alphabet = "aZ09 +-().,/@#x\t\n\u00a0\u200bé정\u0663\uff10\ufeff\x00'\"" + "".join(
        map(chr, range(0x2000, 0x2010))
    )

    def garbage() -> object:
        kind = rng.randrange(10)
        if kind == 0:
            return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        if kind == 1:
            return rng.choice([None, "", float("nan"), float("inf"), -0.0, True, 10**30, 10**5000, -5])
        if kind == 2:
            return rng.choice([Decimal("NaN"), Decimal("-Infinity"), Decimal("1E+5000"), Decimal("0.000")])
        if kind == 3:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 12)))
        if kind == 4:
            return rng.choice(
                [date(1, 1, 1), datetime(9999, 12, 31, 23, 59), uuid.UUID(int=rng.getrandbits(128))]
            )
        if kind == 5:
            return rng.choice([["a", 1], {"k": "v"}, object(), (1, 2)])
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(60, 70)))

    all_keys = [
        "external_id", "email", "phone", "gender", "birth_year", "birth_month", "birth_day", "last_name",
        "first_name", "first_initial", "city", "state", "zip", "country", "mobile_advertiser_id",
        "app_user_id", "page_user_id", "value",
    ]  # fmt: skip
    for keys in (all_keys, ["email", "dob", "country"]):
        rows = [[garbage() for _ in keys] for _ in range(300)]
        for default_country in (None, "US", "GB"):
            preparer = RowPreparer(keys, default_country=default_country)
            batch = preparer.prepare_rows(rows)
            assert len(batch.kept) + len(batch.rejected) == len(rows)
            assert set(batch.dropped) <= set(DROP_REASONS)
            assert set(batch.rejected_by_reason) <= {ROW_NO_IDENTIFIER, ROW_NO_VALUE}
            for row in batch.rows:
                assert len(row) == len(preparer.schema)
                assert all(isinstance(cell, str) for cell in row)
