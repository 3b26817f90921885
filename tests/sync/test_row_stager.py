"""Staging a batch of prepared rows at once must stage each row exactly as staging it alone does."""

from __future__ import annotations

import hashlib

import pytest

from airflow_provider_fbca.sync.plan import RowStager
from airflow_provider_fbca.sync.state import StagedRow
from airflow_provider_fbca.sync.stored_rows import (
    decode_identifiers,
    encode_identifiers,
    encode_identifiers_many,
)

HASH = "a" * 64
ROWS = [
    ["cust-1", HASH, ""],
    ["cust-2", "", HASH],
    ["unit\x1fseparator", HASH, ""],  # stored as JSON
    ["\x1emark first", "", ""],  # stored as JSON
    ["josé", HASH, HASH],
]


@pytest.mark.parametrize(
    "schema", [["EXTERN_ID", "EMAIL", "PHONE"], ["EMAIL", "EXTERN_ID", "LOOKALIKE_VALUE"]]
)
@pytest.mark.parametrize("members", [None, [True, False, True, False, True]])
def test_a_batch_is_staged_as_each_row_alone(schema: list[str], members: list[bool] | None) -> None:
    stager = RowStager(schema)
    digests = [11, None, -3, 2**62, 0]
    alone = [
        stager.stage(row, True if members is None else members[index], digests[index])
        for index, row in enumerate(ROWS)
    ]
    batch = stager.stage_rows(ROWS, members, digests)
    assert batch == alone and all(type(row) is StagedRow for row in batch)
    assert [row.member for row in batch] == [
        1 if members is None else int(member) for member in members or ROWS
    ]
    encoded = [stager.encode(row) for row in ROWS]
    assert stager.stage_rows(ROWS, members, digests, encoded) == alone
    assert stager.stage_rows([], members and [], []) == []


def test_identifiers_are_encoded_in_a_batch_as_alone() -> None:
    for rows in (ROWS[:2], ROWS, [ROWS[2]], []):
        assert encode_identifiers_many(rows) == [encode_identifiers(row) for row in rows]
        assert [decode_identifiers(text) for text in encode_identifiers_many(rows)] == rows


def test_the_stored_digests_keep_their_format() -> None:
    # The state stores them: a run compares them with the ones it computes, so they must never change.
    stager = RowStager(["EXTERN_ID", "EMAIL", "LOOKALIKE_VALUE"])
    for row in (["cust-1", HASH, "12.5"], ["josé", "", "0"]):
        staged = stager.stage(row, True)
        for digest, values in ((staged.fingerprint, row), (staged.id_digest, row[:2])):
            text = "EXTERN_ID,EMAIL,LOOKALIKE_VALUE\n" + encode_identifiers(values)
            assert digest == hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()
    stager = RowStager(["EXTERN_ID", "EMAIL"])  # a batch without LOOKALIKE_VALUE: digests of their own
    for row in stager.stage_rows([["cust-1", HASH], ["josé 😀", ""]], None, [None, None]):
        text = "EXTERN_ID,EMAIL\n" + row.identifiers
        expected = hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()
        assert row.fingerprint == row.id_digest == expected
