"""The batch check of upload rows: one odd value anywhere in a full 10,000-row batch is judged as Meta does.

Each case puts the odd value in the middle of a batch of good rows, and compares the batch check with the
row-by-row check it stands in for (forced by making the batch check find nothing clean).
"""

from __future__ import annotations

from typing import Any

import pytest
from sandbox_support import sha256

from airflow_provider_fbca.sandbox import validation
from airflow_provider_fbca.sandbox.errors import GraphError
from airflow_provider_fbca.sandbox.validation import MAX_ROWS_PER_REQUEST, Upload, parse_payload

SCHEMA = ["EXTERN_ID", "EMAIL", "PHONE"]
MIDDLE = MAX_ROWS_PER_REQUEST // 2
GOOD = sha256("ok@example.com")


def _batch(odd: list[Any]) -> list[list[Any]]:
    rows: list[list[Any]] = [
        [f"c-{n}", sha256(f"{n}@example.com"), sha256(f"1650{n:07d}")] for n in range(10_000)
    ]
    rows[MIDDLE] = odd
    return rows


def _outcome(upload: Upload) -> tuple[object, ...]:
    packable = upload.packable if upload.packable is not None else [True] * len(upload.rows)
    return (
        upload.rows,
        packable,
        upload.num_received,
        upload.num_invalid_entries,
        upload.invalid_entry_samples,
    )


def _row_by_row(payload: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Upload:
    with monkeypatch.context() as patch:
        patch.setattr(validation, "_batch_is_clean", lambda schema, rows: False)
        return parse_payload(payload)


@pytest.mark.parametrize(
    ("odd", "invalid", "stored"),
    [
        pytest.param(["c-x", GOOD.upper(), ""], 1, ["c-x", "", ""], id="uppercase-hex"),
        pytest.param(["c-x", GOOD[:63], ""], 1, ["c-x", "", ""], id="63-characters"),
        pytest.param(["c-x", GOOD + "0", ""], 1, ["c-x", "", ""], id="65-characters"),
        pytest.param(["c-x", GOOD[:63] + " ", ""], 1, ["c-x", "", ""], id="64-with-a-space"),
        pytest.param(["c-x", GOOD[:62] + "\n\n", ""], 1, ["c-x", "", ""], id="64-ending-in-newlines"),
        pytest.param(
            ["c-x", GOOD[:30] + "  " + GOOD[32:], ""], 1, ["c-x", "", ""], id="64-with-spaces-between-pairs"
        ),
        pytest.param(["c-x", GOOD[:63] + "g", ""], 1, ["c-x", "", ""], id="a-non-hex-letter"),
        pytest.param(["c-x", "raw@example.com", GOOD], 1, ["c-x", "", GOOD], id="raw-e-mail"),
        pytest.param(["c-x", GOOD + GOOD, ""], 1, ["c-x", "", ""], id="two-hashes-joined"),
        pytest.param(["", GOOD.upper(), ""], 1, None, id="no-strong-value-left"),
        pytest.param(["c-x", 12345, ""], 1, ["c-x", "", ""], id="a-number-for-a-hash"),
        pytest.param([12345, GOOD, ""], 0, ["12345", GOOD, ""], id="a-number-for-an-id"),
        pytest.param([None, GOOD, None], 0, ["", GOOD, ""], id="nulls"),
        pytest.param(["c-\x1fx", GOOD, ""], 0, ["c-\x1fx", GOOD, ""], id="a-separator-in-an-id"),
        pytest.param(["c-x", "", ""], 0, ["c-x", "", ""], id="empty-hashes"),
    ],
)
def test_one_odd_value_in_a_full_batch_is_judged_as_row_by_row(
    odd: list[Any], invalid: int, stored: list[str] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = {"schema": SCHEMA, "data": _batch(odd)}
    upload = parse_payload(payload)
    assert upload.num_received == MAX_ROWS_PER_REQUEST
    assert upload.num_invalid_entries == invalid
    if stored is None:
        assert len(upload.rows) == MAX_ROWS_PER_REQUEST - 1, "a row left with no strong identifier is dropped"
    else:
        assert upload.rows[MIDDLE] == stored
    assert _outcome(upload) == _outcome(_row_by_row(payload, monkeypatch))


def test_hashes_too_short_and_too_long_side_by_side_are_both_invalid(monkeypatch: pytest.MonkeyPatch) -> None:
    """63 + 65 characters hold as many hex digits as two digests: each value is measured, not the batch."""
    rows = _batch(["c-x", GOOD[:63], ""])
    rows[MIDDLE + 1] = ["c-y", GOOD + "a", ""]
    payload = {"schema": SCHEMA, "data": rows}
    upload = parse_payload(payload)
    assert upload.num_invalid_entries == 2
    assert _outcome(upload) == _outcome(_row_by_row(payload, monkeypatch))


def test_a_clean_full_batch_is_kept_as_sent() -> None:
    rows = _batch(["c-x", GOOD, ""])
    upload = parse_payload({"schema": SCHEMA, "data": rows})
    assert upload.rows == rows and upload.packable is None and upload.num_invalid_entries == 0


def test_a_row_of_the_wrong_width_in_a_full_batch_is_refused() -> None:
    for odd in (["c-x", GOOD], ["c-x", GOOD, "", ""], "c-x"):
        with pytest.raises(GraphError) as refused:
            parse_payload({"schema": SCHEMA, "data": _batch(odd)})  # type: ignore[arg-type]
        assert refused.value.code == 100
        assert f"payload[data][{MIDDLE}]" in refused.value.message


@pytest.mark.parametrize("value", ["-1", "1e3", "", "12.", 7.5])
def test_a_bad_or_typed_lookalike_value_in_a_full_batch(
    value: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows: list[list[Any]] = [[sha256(f"{n}@example.com"), str(n)] for n in range(MAX_ROWS_PER_REQUEST)]
    rows[MIDDLE] = [GOOD, value]
    payload = {"schema": ["EMAIL", "LOOKALIKE_VALUE"], "data": rows}
    upload = parse_payload(payload)
    assert upload.num_invalid_entries == (0 if value == 7.5 else 1)
    assert _outcome(upload) == _outcome(_row_by_row(payload, monkeypatch))
