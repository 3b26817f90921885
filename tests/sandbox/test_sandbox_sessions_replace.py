"""Upload sessions as GET /{id}/sessions reports them, and the usersreplace state machine."""

from __future__ import annotations

from typing import Any

from sandbox_support import PERSON_SCHEMA, Graph, assert_graph_error, person_row, population_row

from airflow_provider_fbca.sandbox import ManualClock, Sandbox

WINDOW_S = 90 * 60


def sessions(graph: Graph, audience_id: str, **params: Any) -> list[dict[str, Any]]:
    response = graph.get(f"{audience_id}/sessions", **params)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def batch(session_id: int, seq: int, last: bool = False, **extra: Any) -> dict[str, Any]:
    return {"session_id": session_id, "batch_seq": seq, "last_batch_flag": last, **extra}


def test_session_counters_are_strings_and_finish_after_the_delay(
    sb: Sandbox, clock: ManualClock, graph: Graph, audience_id: str
) -> None:
    sb.set_processing_delay(30)
    rows = [person_row(n) for n in range(4)]
    rows.append(["ext-bad", "not-a-hash", "", "", "", ""])
    graph.upload(audience_id, PERSON_SCHEMA, rows[:2], session=batch(11, 1, estimated_num_total=5))
    [open_session] = sessions(graph, audience_id)
    assert open_session == {
        "session_id": "11",
        "start_time": str(int(clock())),
        "end_time": "0",
        "num_received": "2",
        "num_matched": "-1",
        "num_invalid_entries": "0",
        "progress": open_session["progress"],
        "stage": "processing",
    }
    assert 0 < int(open_session["progress"]) < 100
    clock.advance(10)
    graph.upload(audience_id, PERSON_SCHEMA, rows[2:], session=batch(11, 2, last=True))
    closed = sessions(graph, audience_id)[0]
    assert closed["stage"] == "processing" and closed["num_matched"] == "-1", "processing delay not over"
    assert closed["num_received"] == "5" and closed["num_invalid_entries"] == "1"
    clock.advance(30)
    finished = sessions(graph, audience_id)[0]
    assert finished["stage"] == "finished" and finished["progress"] == "100"
    assert finished["end_time"] == str(int(clock()))
    assert finished["num_matched"] == "0", "made-up people are not in the population"
    assert all(isinstance(value, str) for value in finished.values())


def test_a_session_never_closed_stays_processing(clock: ManualClock, graph: Graph, audience_id: str) -> None:
    graph.upload(audience_id, "EXTERN_ID", ["1"], session=batch(21, 1))
    clock.advance(86_400)
    assert sessions(graph, audience_id)[0]["stage"] == "processing"


def test_sessions_newest_first_and_filtered(clock: ManualClock, graph: Graph, audience_id: str) -> None:
    for session_id in (31, 32, 33):
        graph.upload(audience_id, "EXTERN_ID", [str(session_id)], session=batch(session_id, 1, last=True))
        clock.advance(1)
    assert [s["session_id"] for s in sessions(graph, audience_id)] == ["33", "32", "31"]
    assert [s["session_id"] for s in sessions(graph, audience_id, session_id=32)] == ["32"]
    assert sessions(graph, audience_id, session_id=99) == []
    for session_id in (34, 35):  # started in the same second: still newest first
        graph.upload(audience_id, "EXTERN_ID", [str(session_id)], session=batch(session_id, 1, last=True))
    assert [s["session_id"] for s in sessions(graph, audience_id)][:3] == ["35", "34", "33"]


def test_sessions_are_paged_like_every_edge(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    for session_id in range(1, 28):
        graph.upload(audience_id, "EXTERN_ID", [str(session_id)], session=batch(session_id, 1, last=True))
    pages = []
    response = graph.get(f"{audience_id}/sessions")
    while True:
        body = response.json()
        pages.append([s["session_id"] for s in body["data"]])
        next_url = body["paging"].get("next")
        if next_url is None:
            break
        assert sb.access_token not in next_url, "the next link carries no token"
        response = graph.http.get(next_url, params=graph.auth, timeout=10)
    assert [len(page) for page in pages] == [25, 2], "default page size 25, no next on the last page"
    assert [sid for page in pages for sid in page] == [str(n) for n in range(27, 0, -1)]

    first = graph.get(f"{audience_id}/sessions", limit=10).json()
    second = graph.get(f"{audience_id}/sessions", limit=10, after=first["paging"]["cursors"]["after"]).json()
    assert [s["session_id"] for s in second["data"]] == [str(n) for n in range(17, 7, -1)]
    back = graph.get(f"{audience_id}/sessions", limit=10, before=second["paging"]["cursors"]["before"])
    assert back.json()["data"] == first["data"]
    assert "previous" not in first["paging"] and "previous" in second["paging"]
    # A session uploaded between two pages neither shifts nor repeats the next page.
    graph.upload(audience_id, "EXTERN_ID", ["new"], session=batch(28, 1, last=True))
    again = graph.get(f"{audience_id}/sessions", limit=10, after=first["paging"]["cursors"]["after"])
    assert again.json()["data"] == second["data"]
    filtered = graph.get(f"{audience_id}/sessions", session_id=5, limit=1).json()
    assert [s["session_id"] for s in filtered["data"]] == ["5"] and "next" not in filtered["paging"]
    assert_graph_error(graph.get(f"{audience_id}/sessions", limit=0), 100)


def test_upload_without_session_gets_a_session_from_meta(graph: Graph, audience_id: str) -> None:
    body = graph.upload(audience_id, "EXTERN_ID", ["1"]).json()
    assert body["session_id"].isdigit()
    [session] = sessions(graph, audience_id)
    assert session["session_id"] == body["session_id"] and session["stage"] == "finished"


def test_replace_swaps_the_members_when_the_last_batch_arrives(
    sb: Sandbox, graph: Graph, audience_id: str
) -> None:
    graph.upload(audience_id, PERSON_SCHEMA, [population_row(sb, n) for n in range(5)])
    first = graph.upload(
        audience_id, PERSON_SCHEMA, [population_row(sb, 10)], edge="usersreplace", session=batch(41, 1)
    )
    assert first.status_code == 200 and first.json()["num_received"] == 1
    assert graph.get(audience_id, fields="operation_status").json()["operation_status"]["code"] == 414
    assert len(sb.members(audience_id)) == 5, "the old members stay until the replace completes"
    in_progress = graph.upload(audience_id, PERSON_SCHEMA, [population_row(sb, 99)])
    error = assert_graph_error(in_progress, 2650, 1870145)
    assert error["error_user_title"] == "Audience Update In Progress"
    another = graph.upload(
        audience_id, PERSON_SCHEMA, [population_row(sb, 98)], edge="usersreplace", session=batch(42, 1)
    )
    assert_graph_error(another, 2650, 1870145)
    graph.upload(
        audience_id, PERSON_SCHEMA, [population_row(sb, 11)], edge="usersreplace", session=batch(41, 2)
    )
    graph.upload(
        audience_id,
        PERSON_SCHEMA,
        [population_row(sb, 12)],
        edge="usersreplace",
        session=batch(41, 2, last=True),
    )
    assert [m["EXTERN_ID"] for m in sb.members(audience_id)] == ["pop-10", "pop-11", "pop-12"]
    assert graph.get(audience_id, fields="operation_status").json()["operation_status"]["code"] == 200
    assert sessions(graph, audience_id, session_id=41)[0]["num_received"] == "3"
    late = graph.upload(
        audience_id, PERSON_SCHEMA, [population_row(sb, 13)], edge="usersreplace", session=batch(41, 3)
    )
    assert_graph_error(late, 2650, 1870159)
    restart = graph.upload(
        audience_id, PERSON_SCHEMA, [population_row(sb, 13)], edge="usersreplace", session=batch(41, 1)
    )
    assert_graph_error(restart, 2650, 1870159)
    assert graph.upload(audience_id, PERSON_SCHEMA, [population_row(sb, 14)]).status_code == 200, (
        "/users works again"
    )


def test_replace_needs_batch_one_first(graph: Graph, audience_id: str) -> None:
    response = graph.upload(audience_id, "EXTERN_ID", ["1"], edge="usersreplace", session=batch(51, 2))
    assert_graph_error(response, 2650, 1870147)


def test_replace_needs_a_session_and_one_schema(graph: Graph, audience_id: str) -> None:
    assert_graph_error(graph.upload(audience_id, "EXTERN_ID", ["1"], edge="usersreplace"), 100)
    no_seq = graph.upload(audience_id, "EXTERN_ID", ["1"], edge="usersreplace", session={"session_id": 61})
    assert_graph_error(no_seq, 100)
    graph.upload(audience_id, "EXTERN_ID", ["1"], edge="usersreplace", session=batch(62, 1))
    other_schema = graph.upload(
        audience_id, ["EXTERN_ID", "EMAIL"], [["2", ""]], edge="usersreplace", session=batch(62, 2)
    )
    assert_graph_error(other_schema, 100)


def test_replace_window_expires_after_90_minutes(
    sb: Sandbox, clock: ManualClock, graph: Graph, audience_id: str
) -> None:
    graph.upload(audience_id, PERSON_SCHEMA, [population_row(sb, n) for n in range(3)])
    graph.upload(
        audience_id, PERSON_SCHEMA, [population_row(sb, 20)], edge="usersreplace", session=batch(71, 1)
    )
    clock.advance(WINDOW_S - 1)
    in_time = graph.upload(
        audience_id, PERSON_SCHEMA, [population_row(sb, 21)], edge="usersreplace", session=batch(71, 2)
    )
    assert in_time.status_code == 200
    clock.advance(2)
    late = graph.upload(
        audience_id,
        PERSON_SCHEMA,
        [population_row(sb, 22)],
        edge="usersreplace",
        session=batch(71, 3, last=True),
    )
    error = assert_graph_error(late, 2650, 1870158)
    assert "90 minutes" in error["error_user_msg"]
    assert [m["EXTERN_ID"] for m in sb.members(audience_id)] == ["pop-20", "pop-21"], "what arrived in time"
    assert graph.get(audience_id, fields="operation_status").json()["operation_status"]["code"] == 415
    assert sessions(graph, audience_id, session_id=71)[0]["stage"] == "finished"
    next_replace = graph.upload(
        audience_id,
        PERSON_SCHEMA,
        [population_row(sb, 30)],
        edge="usersreplace",
        session=batch(72, 1, last=True),
    )
    assert next_replace.status_code == 200
    assert graph.get(audience_id, fields="operation_status").json()["operation_status"]["code"] == 200


def test_expired_replace_frees_the_audience_for_users(
    clock: ManualClock, graph: Graph, audience_id: str
) -> None:
    graph.upload(audience_id, "EXTERN_ID", ["1"], edge="usersreplace", session=batch(81, 1))
    assert_graph_error(graph.upload(audience_id, "EXTERN_ID", ["2"]), 2650, 1870145)
    clock.advance(WINDOW_S + 1)
    assert graph.upload(audience_id, "EXTERN_ID", ["2"]).status_code == 200


def test_replace_on_a_flagged_audience(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    sb.flag_audience(audience_id)
    response = graph.upload(audience_id, "EXTERN_ID", ["1"], edge="usersreplace", session=batch(91, 1))
    assert_graph_error(response, 100, 1713230)
