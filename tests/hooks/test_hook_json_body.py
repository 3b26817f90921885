"""The request body's JSON text: joined rows must be exactly what json.dumps writes."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from airflow_provider_fbca.hooks import json_body
from airflow_provider_fbca.hooks.json_body import dumps_compact


def _digest(number: int) -> str:
    return hashlib.sha256(str(number).encode()).hexdigest()


def _upload(rows: list[Any]) -> dict[str, Any]:
    return {
        "payload": {"schema": ["EXTERN_ID", "EMAIL", "COUNTRY"], "data": rows, "is_raw": True},
        "session": {"session_id": 7, "batch_seq": 1, "last_batch_flag": False, "estimated_num_total": 3},
    }


PLAIN = [[f"cust-{i}", _digest(i), ""] for i in range(50)]
BODIES = [
    _upload(PLAIN),
    _upload([tuple(row) for row in PLAIN]),
    _upload([*PLAIN, ['a "quoted" id', _digest(1), ""]]),
    _upload([*PLAIN, ["back\\slash", _digest(2), ""]]),
    _upload([*PLAIN, ['a","b', _digest(2), '"],["']]),  # the separators' own text inside values
    _upload([*PLAIN, ["tab\there", _digest(3), ""]]),
    _upload([*PLAIN, ["nul\x00", _digest(4), "\x1f"]]),
    _upload([*PLAIN, ["del\x7f", _digest(5), ""]]),
    _upload([*PLAIN, ["josé", _digest(6), "ü"]]),
    _upload([*PLAIN, ["emoji \U0001f600", _digest(7), ""]]),
    _upload([*PLAIN, ["typed", _digest(8), ["LDU"], 0, 1000]]),  # DATA_PROCESSING_OPTIONS columns
    _upload([[]]),
    _upload([]),
    _upload(["EXTERN_ID-only", "single-key values"]),
    {"name": "an audience", "retention_days": 30, "nested": {1: "int key", "b": [1.5, None, True]}},
    {"unicode key \u00e9": [["x"]]},
]


@pytest.mark.parametrize("body", BODIES)
def test_the_text_is_json_dumps_own(body: dict[str, Any]) -> None:
    assert dumps_compact(body) == json.dumps(body, separators=(",", ":"))


def test_plain_text_rows_are_joined_and_others_left_to_json() -> None:
    assert json_body._plain_text_rows(PLAIN)
    for escaped in ('"', "\\", "\n", "\x00", "\x7f", "é"):
        assert not json_body._plain_text_rows([*PLAIN, ["x" + escaped, "", ""]])
    assert not json_body._plain_text_rows([*PLAIN, ["x", 1, ""]])
