"""The partition filter and its checks (plain Python and SQLite; PostgreSQL runs it in the operator tests)."""

from __future__ import annotations

import itertools
import sqlite3
from typing import Any

import pytest

from airflow_provider_fbca.sync.dialects import DIALECTS, register_functions
from airflow_provider_fbca.sync.partitions import (
    check_partition,
    check_partitions,
    in_partition,
    partition_query,
    partition_suffix,
)

IDS: list[Any] = [f"cust-{i}" for i in range(200)] + [7, 8.5, " padded ", None, "Ünïcode", 'with "quote']


@pytest.fixture
def warehouse() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    register_functions(conn)
    conn.execute('CREATE TABLE model ("Customer Id" ANY, email TEXT)')
    conn.executemany("INSERT INTO model VALUES (?, 'x')", [(i,) for i in IDS])
    return conn


def partition_ids(conn: sqlite3.Connection, sql: str, partition: int, partitions: int) -> list[Any]:
    query = partition_query(sql, "Customer Id", partition, partitions, DIALECTS["sqlite"])
    return [row[0] for row in conn.execute(query)]


def test_the_partitions_split_the_model_without_overlap_or_loss(warehouse: sqlite3.Connection) -> None:
    # A trailing comment and semicolon, as .sql files have them, do not break the wrapping.
    sql = 'SELECT "Customer Id", email FROM model -- the model\n;\n'
    shares = [partition_ids(warehouse, sql, k, 4) for k in range(4)]
    assert sorted(map(repr, itertools.chain(*shares))) == sorted(map(repr, IDS))
    assert all(len(ids) > 25 for ids in shares)  # a hash spreads them, not a range
    # The client-side filter (a warehouse without a dialect entry) picks exactly the same rows.
    for k, ids in enumerate(shares):
        assert [cell for cell in IDS if in_partition(cell, k, 4)] == ids


def test_a_partition_is_the_same_on_every_run_and_one_partition_is_everything(
    warehouse: sqlite3.Connection,
) -> None:
    sql = "SELECT * FROM model"
    assert partition_ids(warehouse, sql, 2, 3) == partition_ids(warehouse, sql, 2, 3)
    assert len(partition_ids(warehouse, sql, 0, 1)) == len(IDS)


@pytest.mark.parametrize(("partition", "expected"), [(0, 0), (3, 3), ("2", 2), (" 1 ", 1)])
def test_a_rendered_partition_is_read_as_a_number(partition: Any, expected: int) -> None:
    assert check_partition(partition, 4) == expected


@pytest.mark.parametrize("partition", [4, -1, "x", "{{ ti.map_index }}", True, 1.0, None])
def test_a_partition_out_of_range_is_refused(partition: Any) -> None:
    with pytest.raises(
        ValueError, match=r"from 0 to 3 \(partitions=4\).*expand\(partition=list\(range\(4\)\)\)"
    ):
        check_partition(partition, 4)


@pytest.mark.parametrize("partitions", [0, -2, 257, "4", True, 2.0])
def test_a_number_of_partitions_out_of_range_is_refused(partitions: Any) -> None:
    with pytest.raises(ValueError, match="partitions must be a whole number from 1 to 256"):
        check_partitions(partitions)


def test_one_partition_keeps_todays_keys() -> None:
    assert partition_suffix(0, 1) == ""
    assert partition_suffix(3, 8) == "#p3of8"
