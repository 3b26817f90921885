"""The first pass of a streamed first sync: the keys decide whether the run may stream."""

from __future__ import annotations

import pytest

from airflow_provider_fbca.sync.engine import parse_membership
from airflow_provider_fbca.sync.first_sync import scan_keys, streamed_pages


def _strip(values: list[object]) -> list[str]:
    return [str(value).strip() for value in values]


def test_distinct_keys_stream_and_are_counted() -> None:
    scan = scan_keys([[("a",), ("b",)], [("c",)]], 0, _strip)
    assert (scan.rows, scan.members, scan.streamable) == (3, 3, True)


def test_keys_equal_once_prepared_do_not_stream() -> None:
    # " b" and "b" are one EXTERN_ID as sent: the staged path refuses (or accepts) the model.
    assert not scan_keys([[("a",), ("b",)], [(" b",)]], 0, _strip).streamable


def test_a_key_that_looks_personal_does_not_stream() -> None:
    assert not scan_keys([[("a",), ("someone@example.com",)]], 0, _strip).streamable
    assert not scan_keys([[("a",), ("+14155550100",)]], 0, _strip).streamable
    assert scan_keys([[("a",), ("14155550100",)]], 0, _strip).streamable  # plain digits: a customer id


def test_an_empty_model_does_not_stream() -> None:
    assert not scan_keys([], 0, _strip).streamable


def test_membership_cells_are_counted_and_checked_before_anything_is_sent() -> None:
    scan = scan_keys([[("a", 1), ("b", "false"), ("c", None)]], 0, _strip, parse_membership)
    assert (scan.rows, scan.members) == (3, 1)
    with pytest.raises(ValueError, match="neither true nor false"):
        scan_keys([[("a", 1), ("b", "someone@example.com")]], 0, _strip, parse_membership)


def test_many_keys_in_few_buckets_are_told_apart() -> None:
    keys = [[(f"id-{i}",) for i in range(start, start + 1000)] for start in range(0, 20_000, 1000)]
    assert scan_keys(keys, 0, _strip).streamable
    assert not scan_keys([*keys, [("id-19999",)]], 0, _strip).streamable


def test_pages_carry_their_wire_rows() -> None:
    chunks = [
        ([f"staged-{i}" for i in chunk], [[f"wire-{i}"] for i in chunk])
        for chunk in ([0], [1, 2, 3], [], [4])
    ]
    pages = list(streamed_pages(chunks, 2))  # type: ignore[arg-type]
    assert [list(page) for page in pages] == [
        ["staged-0", "staged-1"],
        ["staged-2", "staged-3"],
        ["staged-4"],
    ]
    assert [page.wire for page in pages] == [[["wire-0"], ["wire-1"]], [["wire-2"], ["wire-3"]], [["wire-4"]]]
    assert [len(page) for page in streamed_pages([(list(range(7)), list(range(7)))], 3)] == [3, 3, 1]


def test_the_column_rule_keys_every_cell_as_the_cell_rule_does() -> None:
    from decimal import Decimal

    from airflow_provider_fbca.sync.engine import _default_key_normalizer, _default_keys_normalizer

    class Text(str):
        pass

    text = [" a ", "b\t", "\u00a0c\u2003", "", "d"]
    mixed = [*text, 12, 34.0, Decimal("56.00"), None, b" e ", Text(" f ")]
    for column in (text, mixed):
        assert _default_keys_normalizer(column) == [_default_key_normalizer(cell) for cell in column]
