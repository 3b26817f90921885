"""Limited Data Use: Meta's documented DATA_PROCESSING_OPTIONS values, per row and per sync (reference §2)."""

from __future__ import annotations

import pytest

from airflow_provider_fbca.hooks.upload_payload import build_upload_payload
from airflow_provider_fbca.identifiers import (
    ROW_INVALID_PROCESSING,
    check_data_processing_options,
    normalize_with_reason,
    prepare_rows,
)

KEYS = [
    "external_id",
    "data_processing_options",
    "data_processing_options_country",
    "data_processing_options_state",
]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["LDU"], "LDU"),
        ('["LDU"]', "LDU"),  # a JSON column as text
        ("LDU", "LDU"),
        (" ldu ", "LDU"),
        ([], ""),
        ("[]", ""),
        (None, ""),
        ("", ""),
        (["LDU", "LDU"], "data_processing_options.invalid"),
        (["GDPR"], "data_processing_options.invalid"),
        ("yes", "data_processing_options.invalid"),
        ("[LDU", "data_processing_options.invalid"),
        ('{"LDU": true}', "data_processing_options.invalid"),
    ],
)
def test_options_take_meta_s_two_documented_values(value: object, expected: str) -> None:
    normalized, reason = normalize_with_reason("DATA_PROCESSING_OPTIONS", value)
    assert (reason or normalized) == expected


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("DATA_PROCESSING_OPTIONS_COUNTRY", 1, "1"),
        ("DATA_PROCESSING_OPTIONS_COUNTRY", "0", "0"),
        ("DATA_PROCESSING_OPTIONS_COUNTRY", 1.0, "1"),
        ("DATA_PROCESSING_OPTIONS_COUNTRY", 2, "data_processing_options_country.invalid"),
        ("DATA_PROCESSING_OPTIONS_COUNTRY", "US", "data_processing_options_country.invalid"),
        ("DATA_PROCESSING_OPTIONS_COUNTRY", True, "data_processing_options_country.invalid"),
        ("DATA_PROCESSING_OPTIONS_STATE", 1000, "1000"),
        ("DATA_PROCESSING_OPTIONS_STATE", "0", "0"),
        ("DATA_PROCESSING_OPTIONS_STATE", 1001, "data_processing_options_state.invalid"),
        ("DATA_PROCESSING_OPTIONS_STATE", "CA", "data_processing_options_state.invalid"),
    ],
)
def test_country_and_state_take_meta_s_documented_codes(key: str, value: object, expected: str) -> None:
    normalized, reason = normalize_with_reason(key, value)
    assert (reason or normalized) == expected


def test_a_row_is_rejected_rather_than_sent_without_usable_options() -> None:
    batch = prepare_rows(
        KEYS,
        [
            ["california", ["LDU"], 1, 1000],
            ["geolocated", "LDU", 0, 0],
            ["none", [], None, None],
            ["unset", None, None, None],
            ["no-location", ["LDU"], None, None],  # LDU needs a documented location
            ["mixed", ["LDU"], 1, 0],  # 1/0 is no documented pair
            ["typo", ["LUD"], 1, 1000],  # an unreadable option must not silently become "none"
            ["bad-state", ["LDU"], 1, 1234],
        ],
    )
    assert [row[0] for row in batch.rows] == ["california", "geolocated", "none", "unset"]
    assert batch.rows[:2] == [("california", "LDU", "1", "1000"), ("geolocated", "LDU", "0", "0")]
    assert batch.rejected == [4, 5, 6, 7]
    assert batch.rejected_by_reason == {ROW_INVALID_PROCESSING: 4}


def test_the_payload_sends_options_as_a_list_and_the_location_as_integers() -> None:
    batch = prepare_rows(KEYS, [["a", "LDU", 1, 1000], ["b", [], None, None]])
    payload = build_upload_payload(
        [
            "EXTERN_ID",
            "DATA_PROCESSING_OPTIONS",
            "DATA_PROCESSING_OPTIONS_COUNTRY",
            "DATA_PROCESSING_OPTIONS_STATE",
        ],
        batch.rows,
    )
    assert payload["data"] == [["a", ["LDU"], 1, 1000], ["b", [], 0, 0]]


@pytest.mark.parametrize(
    ("options", "country", "state"),
    [(None, None, None), ([], None, None), (["LDU"], 1, 1000), (["LDU"], 0, 0), (("ldu",), 1, 1000)],
)
def test_documented_sync_wide_options_pass(options: object, country: object, state: object) -> None:
    check_data_processing_options(options, country, state)


@pytest.mark.parametrize(
    ("options", "country", "state", "message"),
    [
        ("LDU", 1, 1000, r'must be \["LDU"\]'),
        (["LDU", "OTHER"], 1, 1000, r'must be \["LDU"\]'),
        (["LDU"], None, None, "1/1000"),
        (["LDU"], 1, 0, "1/1000 .* or 0/0"),
        (["LDU"], "1", "1000", "not '1'/'1000'"),
        (["LDU"], True, 1000, "1/1000"),
        ([], 1, 1000, "go with"),
        (None, 0, 0, "go with"),
    ],
)
def test_undocumented_sync_wide_options_fail_with_the_documented_values(
    options: object, country: object, state: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_data_processing_options(options, country, state)
