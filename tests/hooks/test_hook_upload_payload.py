"""Upload bodies in plain Python: hashed keys carry SHA-256 digests or nothing, else nothing is sent."""

from __future__ import annotations

import hashlib

import pytest

from airflow_provider_fbca.hooks.upload_payload import (
    HASHED_SCHEMA_KEYS,
    build_upload_payload,
    check_hashed_values,
    prepare_upload,
)
from airflow_provider_fbca.identifiers import MATCH_KEYS, RowPreparer, prepare

RAW_EMAIL = "Alice.Example@Example.com"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def refusal(schema, data) -> str:
    with pytest.raises(ValueError, match="Refusing to send") as raised:
        build_upload_payload(schema, data)
    return str(raised.value)


def test_a_raw_email_is_refused_naming_key_and_count_never_the_value() -> None:
    message = refusal(["EXTERN_ID", "EMAIL"], [["id-1", RAW_EMAIL], ["id-2", sha("b@example.com")]])
    assert "1 of 2 EMAIL values" in message
    assert "prepare=True" in message
    assert RAW_EMAIL not in message and RAW_EMAIL.lower() not in message


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (sha("a@example.com").upper(), "a digest in upper case is not what Meta takes"),
        (sha("a@example.com")[:63], "63 characters"),
        (sha("a@example.com") + " ", "trailing space"),
        (f"{sha('a')}\n{sha('b')}", "two digests in one value"),
        (16505551212, "a phone number as an int"),
        ("+1 650 555 1212", "a raw phone number"),
    ],
)
def test_anything_but_a_lowercase_digest_in_a_hashed_key_is_refused(value, why) -> None:
    message = refusal(["EMAIL", "PHONE"], [[sha("x@example.com"), sha("16505550000")], [sha("y"), value]])
    assert "1 of 2 PHONE values" in message, why
    assert "EMAIL" not in message.split(":")[0], why


def test_every_key_at_fault_is_named_with_its_count() -> None:
    message = refusal(["EMAIL", "FN", "LN"], [[RAW_EMAIL, "alice", sha("doe")], [RAW_EMAIL, "bob", ""]])
    assert "2 of 2 EMAIL values, 2 of 2 FN values" in message
    assert "LN" not in message.split(":")[0]


def test_single_key_schemas_are_checked_in_both_documented_data_shapes() -> None:
    assert "1 of 2 EMAIL values" in refusal("EMAIL", [sha("a"), RAW_EMAIL])
    assert "1 of 2 EMAIL values" in refusal("EMAIL", [[sha("a")], [RAW_EMAIL]])
    # Meta's legacy single-key names hold digests too.
    assert "1 of 1 EMAIL_SHA256 values" in refusal("EMAIL_SHA256", [RAW_EMAIL])
    assert "1 of 1 PHONE_SHA256 values" in refusal("PHONE_SHA256", ["16505551212"])


def test_digests_empty_values_and_keys_meta_takes_unhashed_pass() -> None:
    rows = [
        ["Customer-7", sha("a@example.com"), "", "6d92078a-8246-4ba4-ae5b-76104861e7dc", "44.5"],
        ["Customer-8", "", None, "", "0"],
    ]
    payload = build_upload_payload(["EXTERN_ID", "EMAIL", "PHONE", "MADID", "LOOKALIKE_VALUE"], rows)
    assert payload["data"] == rows
    check_hashed_values("EXTERN_ID", ["not hashed, and need not be"])


class Text(str):
    """A str subclass, as some drivers return text."""


def test_values_are_told_by_their_text_whatever_their_class() -> None:
    digest = sha("a@example.com")
    check_hashed_values(["EMAIL"], [[Text(digest)], [digest], [""], [None]])  # digests, or empty
    for value in (digest.encode(), [digest], 6.5):  # no text: refused, counted once each
        assert "1 of 2 EMAIL values" in refusal(["EMAIL"], [[digest], [value]])


def test_a_row_of_another_width_than_the_schema_is_named() -> None:
    rows = [[sha("a"), sha("b")], [sha("c"), sha("d")], [sha("e")]]
    with pytest.raises(ValueError, match="Row 2 has 1 values; the schema has 2 keys"):
        build_upload_payload(["EMAIL", "PHONE"], rows)


def test_the_hashed_keys_are_read_from_the_match_key_table() -> None:
    hashed = {key.name for key in MATCH_KEYS if key.hashed}
    assert hashed <= HASHED_SCHEMA_KEYS
    assert {"EMAIL", "PHONE", "FN", "LN", "CT", "ST", "ZIP", "COUNTRY", "GEN", "DOBY"} <= hashed
    assert not {"EXTERN_ID", "MADID", "LOOKALIKE_VALUE"} & HASHED_SCHEMA_KEYS


def test_rows_prepared_as_the_operator_prepares_them_pass() -> None:
    keys = ["external_id", "email", "phone", "first_name", "last_name", "dob", "zip", "country", "gender"]
    raw = [
        ["c-1", " Alice@Example.COM ", "(650) 555-1212", "Álice", "O'Neil", "1990-02-03", "94107", "US", "F"],
        ["c-2", "not an e-mail", "12", "", None, "garbage", "", "France", "x"],
        [
            "c-3",
            sha("bob@example.com").upper(),
            "+44 7911 123456",
            "Bob",
            "Smith",
            None,
            "SW1A 1AA",
            "GB",
            "m",
        ],
    ]
    preparer = RowPreparer(keys)
    batch = preparer.prepare_rows(raw)
    assert len(batch.rows) == 3, "the check must see a row with dropped values too"
    payload = build_upload_payload(list(preparer.schema), [list(row) for row in batch.rows])
    assert len(payload["data"]) == 3


def test_prepare_upload_normalizes_and_hashes_through_the_identifiers_module() -> None:
    prepared = prepare_upload(["external_id", "email", "phone"], [["c-1", RAW_EMAIL, "+1 (650) 555-1212"]])
    assert prepared.schema == ["EXTERN_ID", "EMAIL", "PHONE"]
    assert prepared.rows == [["c-1", prepare("EMAIL", RAW_EMAIL), prepare("PHONE", "+1 (650) 555-1212")]]
    assert prepared.rows[0][1] == sha("alice.example@example.com")
    check_hashed_values(prepared.schema, prepared.rows)


def test_prepare_upload_counts_what_it_drops_and_lowercases_digests() -> None:
    digest = sha("bob@example.com")
    prepared = prepare_upload("EMAIL", [RAW_EMAIL, ["not an e-mail"], digest.upper()])
    assert prepared.schema == "EMAIL"
    assert prepared.rows == [sha("alice.example@example.com"), digest]
    assert prepared.rejected == 1
    assert prepared.dropped == {"email.invalid": 1}


def test_prepare_upload_keeps_a_legacy_name_and_expands_a_date_of_birth() -> None:
    assert prepare_upload("EMAIL_SHA256", [RAW_EMAIL]).schema == "EMAIL_SHA256"
    assert prepare_upload("EMAIL_SHA256", [RAW_EMAIL]).rows == [sha("alice.example@example.com")]
    prepared = prepare_upload(["email", "dob"], [[RAW_EMAIL, "1990-02-03"]])
    assert prepared.schema == ["EMAIL", "DOBY", "DOBM", "DOBD"]
    assert prepared.rows[0][1:] == [sha("1990"), sha("02"), sha("03")]
