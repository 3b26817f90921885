"""Removals Meta refuses for good, and removals that must spare people sharing an identifier."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_fbca.sync.engine import RemovalsRefusedError
from tests.operators.conftest import Warehouse, customer
from tests.operators.test_sync_audience import logged, make_operator, run, user_uploads
from tests.operators.test_sync_recovery import BATCH, V1, V2, members, model_members, query

TOO_LOW = {
    "method": "DELETE",
    "path": "/users$",
    "times": 1000,
    "error": {
        "code": 200,
        "error_subcode": 1870047,
        "message": "Audience Size too Low",
        "error_user_title": "Audience Size too Low",
    },
}
#: The members V2 leaves behind while its removals are refused: five gone rows, two old e-mails.
REFUSED = 7


@pytest.mark.parametrize("on_refused_removals", ["fail", "warn"])
def test_refused_removals_do_not_block_additions_and_stay_owed(
    on_refused_removals: str,
    warehouse: Warehouse,
    sandbox: Any,
    fb_conn_id: str,
    state_table: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    warehouse.write(V1)
    audience_id = run(make_operator(warehouse, fb_conn_id, state_table, batch_size=BATCH))["audience_id"]
    warehouse.write(V2)  # five leave, two change e-mail, ten arrive
    sandbox.set_faults([TOO_LOW])
    options = {"audience_id": audience_id, "batch_size": BATCH, "on_refused_removals": on_refused_removals}

    for attempt in range(2):  # refused again on the next run: still owed, additions unaffected
        if on_refused_removals == "fail":
            with pytest.raises(RemovalsRefusedError, match=rf"removal of {REFUSED} row.*1870047.*warn"):
                run(make_operator(warehouse, fb_conn_id, state_table, **options))
        else:
            report = run(make_operator(warehouse, fb_conn_id, state_table, **options))
            assert report["removals_refused"] == REFUSED
            assert report["owed_removals_sent"] == (0, 2)[attempt]
        got = members(sandbox, audience_id)
        assert set(model_members(V2)) <= set(got)  # every addition landed
        assert len(got) == len(model_members(V2)) + REFUSED
        # The gone rows are still members in the state; the two old e-mails are owed.
        assert query(warehouse, f"SELECT COUNT(*) FROM {state_table}") == [(len(V2) + 5,)]
        assert query(warehouse, f"SELECT COUNT(*) FROM {state_table}_owed") == [(2,)]
    text = logged(caplog, capsys)
    assert "code 200/1870047" in text and "remove fewer people" in text and "example.com" not in text

    sandbox.clear_faults()  # Meta takes them now
    report = run(make_operator(warehouse, fb_conn_id, state_table, **options))
    assert (report["removals_refused"], report["owed_removals_sent"]) == (0, 2)
    assert members(sandbox, audience_id) == model_members(V2)
    assert query(warehouse, f"SELECT COUNT(*) FROM {state_table}_owed") == [(0,)]
    sent = len(user_uploads(sandbox))
    assert run(make_operator(warehouse, fb_conn_id, state_table, **options))["rows_sent"] == 0
    assert len(user_uploads(sandbox)) == sent


def test_removals_never_take_out_people_who_share_an_identifier(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    # Ten people share a family inbox; one of them leaves, and so does a person of their own.
    first = [customer(i, email="family@example.com") for i in range(10)] + [
        customer(i) for i in range(10, 20)
    ]
    rows = [row for row in first if row[0] not in ("cust-00000", "cust-00010")]
    # One more moves into the family inbox: the removal of its old e-mail is not affected.
    rows = [customer(11, email="family@example.com") if row[0] == "cust-00011" else row for row in rows]
    audience_id, report = _two_runs(warehouse, fb_conn_id, state_table, first, rows)
    assert (report["removed"], report["updated_identifiers"]) == (2, 1)
    assert members(sandbox, audience_id) == model_members(rows)  # the family stays
    assert report["identifiers_withheld_shared"] == 1  # the family inbox on cust-00000's removal row


def test_removals_spare_a_new_row_taking_over_an_identifier(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    # A person leaves and, in the same run, a new row arrives with their e-mail (a reassigned inbox):
    # the removal row must not carry it, or it would take out the newcomer just added.
    first = [customer(i) for i in range(10)]
    rows = [*first[1:], customer(50, email=customer(0)[1])]
    audience_id, report = _two_runs(warehouse, fb_conn_id, state_table, first, rows)
    assert (report["removed"], report["added"]) == (1, 1)
    assert report["identifiers_withheld_shared"] == 1
    assert members(sandbox, audience_id) == model_members(rows)  # the newcomer stays


def test_removals_spare_people_staying_unchanged_who_share_an_identifier(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    # Only rows the run does not touch hold the family inbox: found in the state, not among the additions.
    first = [customer(i, email="family@example.com") for i in range(3)] + [customer(i) for i in range(3, 6)]
    rows = first[1:]
    audience_id, report = _two_runs(warehouse, fb_conn_id, state_table, first, rows)
    assert (report["removed"], report["added"], report["updated"]) == (1, 0, 0)
    assert report["identifiers_withheld_shared"] == 1
    assert members(sandbox, audience_id) == model_members(rows)  # the family stays


def _two_runs(
    warehouse: Warehouse, fb_conn_id: str, state_table: str, first: list[Any], then: list[Any]
) -> tuple[str, dict[str, Any]]:
    """Sync ``first`` into a new audience, then ``then``; the audience id and the second run's report."""
    warehouse.write(first)
    audience_id = run(make_operator(warehouse, fb_conn_id, state_table))["audience_id"]
    warehouse.write(then)
    return audience_id, run(make_operator(warehouse, fb_conn_id, state_table, audience_id=audience_id))
