"""An audience as Meta shows it: members, matched people, sizes, statuses, and the removals Meta refuses."""

from __future__ import annotations

from typing import Any

import pytest
from sandbox_support import PERSON_SCHEMA, Graph, assert_graph_error, person_row, population_row, sha256

from airflow_provider_fbca.sandbox import ManualClock, Sandbox
from airflow_provider_fbca.sandbox.population import MATCH_RULES

SIZE_FIELDS = "approximate_count_lower_bound,approximate_count_upper_bound,operation_status,delivery_status"


def view(graph: Graph, audience_id: str) -> dict[str, Any]:
    return graph.get(audience_id, fields=SIZE_FIELDS).json()


def upload_people(
    graph: Graph, audience_id: str, rows: list[list[str]], schema: list[str] = PERSON_SCHEMA
) -> None:
    for start in range(0, len(rows), 10_000):
        assert graph.upload(audience_id, schema, rows[start : start + 10_000]).status_code == 200


def test_an_invalid_entry_is_not_a_member(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    rows = [
        ["", "Mary@Example.com", "", sha256("mary"), "", ""],  # its only strong identifier is invalid
        ["", "Mary@Example.com", sha256("16505551212"), "", "", ""],  # a valid phone stays
        ["ok", "", "", "", "", ""],
    ]
    answer = graph.upload(audience_id, PERSON_SCHEMA, rows).json()
    assert (answer["num_received"], answer["num_invalid_entries"]) == (3, 2)
    assert list(answer["invalid_entry_samples"]) == ["Mary@Example.com"]
    assert sb.members(audience_id) == [
        dict(zip(PERSON_SCHEMA, ["", "", sha256("16505551212"), "", "", ""], strict=True)),
        dict(zip(PERSON_SCHEMA, ["ok", "", "", "", "", ""], strict=True)),
    ], (
        "a row without a valid strong identifier is not stored; a valid one is stored without the invalid value"
    )


def test_size_counts_distinct_matched_people_with_metas_rounding(sb: Sandbox, graph: Graph) -> None:
    nobody = graph.create_audience("nobody")
    upload_people(graph, nobody, [person_row(n) for n in range(3000)])
    assert view(graph, nobody)["approximate_count_lower_bound"] == 1000, "3,000 hashes of nobody: no figure"
    assert view(graph, nobody)["operation_status"]["code"] == 411, "low match rate"
    assert view(graph, nobody)["delivery_status"]["code"] == 300, "too few matched people to deliver"

    people = graph.create_audience("people")
    rows = [population_row(sb, n) for n in range(1940)]
    twice = [[f"again-{row[0]}", *row[1:]] for row in rows[:500]]  # the same people under another id
    upload_people(graph, people, rows + twice)
    seen = view(graph, people)
    assert (seen["approximate_count_lower_bound"], seen["approximate_count_upper_bound"]) == (1800, 2000)
    assert len(sb.members(people)) == 2440, "rows are members; the size counts people"
    assert seen["operation_status"]["code"] == 200 and seen["delivery_status"]["code"] == 200


@pytest.mark.parametrize(
    ("size", "bounds"),
    [
        (0, (1000, 1000)),
        (999, (1000, 1000)),
        (1000, (1000, 1100)),
        (5000, (4900, 5100)),
        (12345, (11000, 13000)),
    ],
)
def test_bounds_round_to_two_significant_digits(size: int, bounds: tuple[int, int]) -> None:
    with Sandbox(population=max(size, 1)) as sb:
        graph = Graph(sb)
        audience_id = graph.create_audience()
        upload_people(
            graph, audience_id, [[sha256(sb.population.person(n).email)] for n in range(size)], ["EMAIL"]
        )
        got = view(graph, audience_id)
        assert (got["approximate_count_lower_bound"], got["approximate_count_upper_bound"]) == bounds


def wire(sb: Sandbox, number: int, keys: tuple[str, ...]) -> list[str]:
    values = sb.population.person(number).normalized()
    return [values[key] if key == "MADID" else sha256(values[key]) for key in keys]


@pytest.mark.parametrize("rule", MATCH_RULES, ids=["+".join(rule) for rule in MATCH_RULES])
def test_every_match_rule_finds_the_person_in_metas_normalized_form(
    sb: Sandbox, graph: Graph, rule: tuple[str, ...]
) -> None:
    audience_id = graph.create_audience("+".join(rule))
    session = {"session_id": 1, "batch_seq": 1, "last_batch_flag": True}
    assert (
        graph.upload(
            audience_id, list(rule), [wire(sb, n, rule) for n in range(5)], session=session
        ).status_code
        == 200
    )
    [listed] = graph.get(f"{audience_id}/sessions").json()["data"]
    assert listed["num_matched"] == "5"


@pytest.mark.parametrize(
    ("schema", "mangle"),
    [
        (["FN", "LN", "CT", "ST"], lambda v: {**v, "CT": v["CT"].title()}),  # "Menlopark": not lowercase
        (["FN", "LN", "COUNTRY", "DOBY", "DOBM", "DOBD"], lambda v: {**v, "DOBY": v["DOBY"][2:]}),
        (
            ["FN", "LN", "GEN", "DOBY", "DOBM", "DOBD"],
            lambda v: {**v, "GEN": "female" if v["GEN"] == "f" else "male"},
        ),
        (["MADID"], lambda v: {**v, "MADID": v["MADID"].upper()}),
    ],
)
def test_a_value_normalized_wrongly_loses_the_match(
    sb: Sandbox, graph: Graph, schema: list[str], mangle: Any
) -> None:
    audience_id = graph.create_audience()
    rows = []
    for n in range(20):
        values = mangle(sb.population.person(n).normalized())
        rows.append([values[key] if key == "MADID" else sha256(values[key]) for key in schema])
    graph.upload(
        audience_id, schema, rows, session={"session_id": 2, "batch_seq": 1, "last_batch_flag": True}
    )
    assert graph.get(f"{audience_id}/sessions").json()["data"][0]["num_matched"] == "0"


def test_extern_id_matches_once_it_matched_before(sb: Sandbox, graph: Graph) -> None:
    first, second = graph.create_audience("first"), graph.create_audience("second")
    assert graph.upload(
        second, "EXTERN_ID", ["pop-1"], session={"session_id": 3, "batch_seq": 1, "last_batch_flag": True}
    ).ok
    assert graph.get(f"{second}/sessions").json()["data"][0]["num_matched"] == "0", "never seen with a match"
    graph.upload(first, PERSON_SCHEMA, [population_row(sb, 1)])
    assert graph.upload(
        second, "EXTERN_ID", ["pop-1"], session={"session_id": 4, "batch_seq": 1, "last_batch_flag": True}
    ).ok
    assert graph.get(f"{second}/sessions", session_id=4).json()["data"][0]["num_matched"] == "1"


def test_statuses_follow_the_uploads(sb: Sandbox, clock: ManualClock, graph: Graph, audience_id: str) -> None:
    assert view(graph, audience_id)["operation_status"]["code"] == 410, "no upload"
    sb.set_processing_delay(60)
    open_session = {"session_id": 8, "batch_seq": 1, "last_batch_flag": False}
    graph.upload(
        audience_id, PERSON_SCHEMA, [population_row(sb, n) for n in range(150)], session=open_session
    )
    assert view(graph, audience_id)["operation_status"]["code"] == 441, "populating while a session is open"
    graph.upload(
        audience_id, PERSON_SCHEMA, [], session={**open_session, "batch_seq": 2, "last_batch_flag": True}
    )
    assert view(graph, audience_id)["operation_status"]["code"] == 441, "and while it processes"
    clock.advance(60)
    assert view(graph, audience_id)["operation_status"]["code"] == 200
    assert view(graph, audience_id)["delivery_status"]["code"] == 200, "150 matched people"
    bad = [[f"bad-{n}", f"user{n}@example.com", "", "", "", ""] for n in range(10)]
    graph.upload(
        audience_id, PERSON_SCHEMA, bad, session={"session_id": 9, "batch_seq": 1, "last_batch_flag": True}
    )
    clock.advance(60)
    assert view(graph, audience_id)["operation_status"]["code"] == 412, (
        "many invalid entries in the last session"
    )


def test_num_invalid_entries_is_a_running_total_per_session_and_samples_per_request(
    graph: Graph, audience_id: str
) -> None:
    session = {"session_id": 21, "batch_seq": 1, "last_batch_flag": False}
    first = graph.upload(audience_id, ["EMAIL"], [["bad-1"], [sha256("x")]], session=session).json()
    second = graph.upload(audience_id, ["EMAIL"], [["bad-2"]], session={**session, "batch_seq": 2}).json()
    assert (first["num_received"], first["num_invalid_entries"]) == (2, 1)
    assert (second["num_received"], second["num_invalid_entries"]) == (3, 2), "running totals for the session"
    assert list(second["invalid_entry_samples"]) == ["bad-2"], "samples: this request's"
    other = graph.upload(
        audience_id, ["EMAIL"], [["bad-3"]], session={"session_id": 22, "batch_seq": 1}
    ).json()
    assert (other["num_received"], other["num_invalid_entries"]) == (1, 1), "a new session starts at zero"


def test_removal_below_the_floor_is_refused(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    sb.set_removal_floor(100)
    upload_people(graph, audience_id, [population_row(sb, n) for n in range(110)])
    removal = [population_row(sb, n) for n in range(11)]
    error = assert_graph_error(
        graph.upload(audience_id, PERSON_SCHEMA, removal, method="DELETE"), 200, 1870047
    )
    assert error["error_user_title"] == "Audience Size Too Low"
    assert len(sb.members(audience_id)) == 110, "nothing removed"
    assert graph.get(f"{audience_id}/sessions").json()["data"][-1]["num_received"] == "110", (
        "no session opened"
    )
    assert graph.upload(audience_id, PERSON_SCHEMA, removal[:10], method="DELETE").status_code == 200
    nobody = [person_row(1)]
    assert graph.upload(audience_id, PERSON_SCHEMA, nobody, method="DELETE").status_code == 200, (
        "size unchanged"
    )
    sb.set_removal_floor(0)
    assert graph.upload(audience_id, PERSON_SCHEMA, removal, method="DELETE").status_code == 200


@pytest.mark.parametrize(
    ("cell", "ok"),
    [
        (["LDU"], True),
        ([], True),
        ('["LDU"]', True),
        ("[]", True),
        ("LDU", False),
        (["LDU", "X"], False),
        (["ldu"], False),
    ],
)
def test_ldu_options_per_row(graph: Graph, audience_id: str, cell: Any, ok: bool) -> None:
    schema = [
        "EMAIL",
        "DATA_PROCESSING_OPTIONS",
        "DATA_PROCESSING_OPTIONS_COUNTRY",
        "DATA_PROCESSING_OPTIONS_STATE",
    ]
    response = graph.upload(audience_id, schema, [[sha256("a@example.com"), cell, 1, 1000]])
    if ok:
        assert response.status_code == 200, response.text
    else:
        assert_graph_error(response, 100)


@pytest.mark.parametrize(
    ("country", "state", "ok"),
    [(0, 0, True), (1, 1000, True), ("1", "1000", True), (2, 1000, False), (1, 999, False), (1, "", False)],
)
def test_ldu_country_and_state_per_row_and_per_payload(
    graph: Graph, audience_id: str, country: Any, state: Any, ok: bool
) -> None:
    schema = [
        "EMAIL",
        "DATA_PROCESSING_OPTIONS",
        "DATA_PROCESSING_OPTIONS_COUNTRY",
        "DATA_PROCESSING_OPTIONS_STATE",
    ]
    per_row = graph.upload(audience_id, schema, [[sha256("a@example.com"), ["LDU"], country, state]])
    per_payload = graph.upload(
        audience_id,
        ["EMAIL"],
        [[sha256("b@example.com")]],
        data_processing_options=["LDU"],
        data_processing_options_country=country,
        data_processing_options_state=state,
    )
    for response in (per_row, per_payload):
        if ok:
            assert response.status_code == 200, response.text
        else:
            assert "Limited Data Use" in assert_graph_error(response, 100)["message"]
    bad_options = graph.upload(
        audience_id, ["EMAIL"], [[sha256("c@example.com")]], data_processing_options=["X"]
    )
    assert_graph_error(bad_options, 100)


def test_control_characters_are_stored_exactly(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    odd = ["a\x1fb", "c\x1ed", "\x00\t\n", "plain"]
    assert (
        graph.upload(audience_id, ["EXTERN_ID", "MADID"], [[value, value] for value in odd]).status_code
        == 200
    )
    assert [(m["EXTERN_ID"], m["MADID"]) for m in sb.members(audience_id)] == [(v, v) for v in odd]
    assert graph.upload(audience_id, "EXTERN_ID", ["a\x1fb"], method="DELETE").status_code == 200
    assert [m["EXTERN_ID"] for m in sb.members(audience_id)] == odd[1:]
