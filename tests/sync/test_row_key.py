"""What may key a row: EXTERN_IDs that are personal data, too long or with control characters."""

from __future__ import annotations

import pytest

from airflow_provider_fbca.sync.row_key import (
    MAX_ROW_KEY_LENGTH,
    clean_keys,
    refuse_personal_key,
    row_key_problem,
)


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("cust-00001", None),
        ("1234567890", None),  # a numeric customer id, not a phone
        ("4155550100", None),
        ("+1234", None),  # a "+" without a valid number
        ("a@b", None),  # not a valid e-mail
        ("x" * MAX_ROW_KEY_LENGTH, None),
        ("", "extern_id.missing"),
        ("x" * (MAX_ROW_KEY_LENGTH + 1), "extern_id.too_long"),
        ("cust\x001", "extern_id.control_character"),
        ("cust\n1", "extern_id.control_character"),
        ("Jose.Sanchez@Example.com", "extern_id.email"),
        ("+1 415 555 0100", "extern_id.phone"),
        ("+33 6 12 34 56 78", "extern_id.phone"),
    ],
)
def test_row_key_problems(key: str, problem: str | None) -> None:
    assert row_key_problem(key) == problem
    # A batch is cleared at once only when no key of it has a problem (a doubtful one is checked alone).
    if problem is not None:
        assert not clean_keys(["cust-00001", key])


def test_a_batch_of_plain_keys_is_clean() -> None:
    assert clean_keys(["cust-00001", "1234567890", "x" * MAX_ROW_KEY_LENGTH])
    assert clean_keys([])


@pytest.mark.parametrize("character", ["\u00a0", "\u2028", "\u200b", "\U000e0001"])
def test_a_key_not_printable_without_a_control_character_is_clean(character: str) -> None:
    """Not printable is no control character (the batch's quick pass is only a shortcut)."""
    key = f"cust{character}00001"
    assert row_key_problem(key) is None
    assert clean_keys(["cust-00002", key])


@pytest.mark.parametrize("character", [chr(code) for code in (*range(0x20), *range(0x7F, 0xA0))])
def test_every_control_character_fails_the_batch(character: str) -> None:
    assert row_key_problem(f"cust{character}1") == "extern_id.control_character"
    assert not clean_keys(["cust-00001", f"cust{character}1"])


def test_the_refusal_describes_and_names_the_fix() -> None:
    message = str(refuse_personal_key("extern_id.email", 7))
    assert message.startswith("Row 7 of the query has an EXTERN_ID that is an e-mail address")
    assert "map external_id to a customer id column, or hash the value in SQL" in message
