"""Upload sessions with several batches in flight: recorded before sending, acknowledged in order."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_fbca.sync.batches import UploadSession


def _session(
    max_in_flight: int, events: list[tuple[str, int]], send: Any, *, first_alone: bool = False
) -> UploadSession[int]:
    return UploadSession(
        1,
        "replace" if first_alone else "add",
        6,
        encode=lambda page: page,
        send=send,
        acknowledge=lambda page, session: events.append(("ack", session["batch_seq"])),
        record=lambda page, session: events.append(("record", session["batch_seq"])),
        max_in_flight=max_in_flight,
        first_alone=first_alone,
    )


def test_batches_overlap_and_are_acknowledged_in_order() -> None:
    events: list[tuple[str, int]] = []
    arrived = {seq: threading.Event() for seq in range(1, 7)}
    flags: dict[int, bool] = {}

    def send(data: list[int], session: dict[str, Any]) -> dict[str, Any]:
        seq = session["batch_seq"]
        flags[seq] = session["last_batch_flag"]
        arrived[seq].set()
        # Batch 2 goes out while batch 1 is in flight (a /users session has no opening batch), and 4 with 3.
        if seq in (1, 3) and not arrived[seq + 1].wait(10):
            raise AssertionError(f"batch {seq + 1} was not sent while batch {seq} was in flight")
        return {"num_received": seq}

    result = _session(2, events, send).run([[i] for i in range(6)])
    assert result.batches == 6 and result.rows == 6
    assert [seq for kind, seq in events if kind == "ack"] == [1, 2, 3, 4, 5, 6]
    # Write-ahead: every batch is recorded before it is sent.
    assert [seq for kind, seq in events if kind == "record"] == [1, 2, 3, 4, 5, 6]
    assert events.index(("record", 2)) < events.index(("ack", 1))
    # A batch going with others in flight is recorded while they fly, before waiting for room: the
    # journal's write is off the round trip's path (recorded and not yet sent, it is pending all the same).
    assert events.index(("record", 4)) < events.index(("ack", 2))
    assert flags == {1: False, 2: False, 3: False, 4: False, 5: False, 6: True}


def test_the_next_batch_is_sent_before_the_landed_one_is_acknowledged() -> None:
    # Acknowledging a batch writes its rows to the state: the next batch must not wait for that write.
    events: list[tuple[str, int]] = []
    sent = {seq: threading.Event() for seq in range(1, 7)}

    def send(data: list[int], session: dict[str, Any]) -> dict[str, Any]:
        sent[session["batch_seq"]].set()
        return {}

    def acknowledge(page: list[int], session: dict[str, Any]) -> None:
        seq = session["batch_seq"]
        if seq < 4 and not sent[seq + 2].wait(10):  # batch 6 is the last: it goes alone
            raise AssertionError(f"batch {seq + 2} waited for batch {seq}'s acknowledgement")
        events.append(("ack", seq))

    session = _session(2, events, send)
    session.acknowledge = acknowledge
    assert session.run([[i] for i in range(6)]).batches == 6
    assert [seq for kind, seq in events if kind == "ack"] == [1, 2, 3, 4, 5, 6]


def test_the_last_batch_is_recorded_while_the_others_fly_and_sent_once_they_are_acknowledged() -> None:
    # Meta's session takes the last batch only once every other landed; the journal's write of it is done
    # while they fly, so that it goes the moment they are acknowledged.
    events: list[tuple[str, int]] = []

    def send(data: list[int], session: dict[str, Any]) -> dict[str, Any]:
        events.append(("sent", session["batch_seq"]))
        return {}

    assert _session(2, events, send).run([[i] for i in range(6)]).batches == 6
    assert events.index(("record", 6)) < events.index(("ack", 5))
    assert events.index(("sent", 6)) > max(events.index(("ack", seq)) for seq in range(1, 6))


def test_no_batch_is_sent_past_a_failed_one_once_it_failed() -> None:
    events: list[tuple[str, int]] = []
    batches: list[int] = []

    def send(data: list[int], session: dict[str, Any]) -> dict[str, Any]:
        batches.append(session["batch_seq"])
        if session["batch_seq"] == 2:
            raise ConnectionError("killed")
        return {}

    with pytest.raises(ConnectionError):
        _session(2, events, send).run([[i] for i in range(6)])
    assert sorted(batches) == [1, 2, 3]  # batch 3 went while 2 flew; none after 2's error was seen
    assert [seq for kind, seq in events if kind == "ack"] == [1]


def test_a_session_whose_first_batch_opens_it_sends_the_second_only_once_the_first_landed() -> None:
    events: list[tuple[str, int]] = []

    def send(data: list[int], session: dict[str, Any]) -> dict[str, Any]:
        return {}

    _session(2, events, send, first_alone=True).run([[i] for i in range(6)])
    assert events.index(("record", 2)) > events.index(("ack", 1))
    assert events.index(("record", 6)) < events.index(("ack", 5))  # the last is recorded while 4 and 5 fly
    assert events.index(("record", 4)) < events.index(("ack", 3))  # the window is used after batch 1


def test_one_in_flight_sends_one_batch_at_a_time() -> None:
    events: list[tuple[str, int]] = []
    in_flight = threading.Semaphore(1)

    def send(data: list[int], session: dict[str, Any]) -> dict[str, Any]:
        if not in_flight.acquire(blocking=False):
            raise AssertionError("two batches in flight")
        in_flight.release()
        return {}

    _session(1, events, send).run([[i] for i in range(6)])
    # Each batch is recorded only after the one before was acknowledged.
    assert events == [(kind, seq) for seq in range(1, 7) for kind in ("record", "ack")]


def test_a_failed_batch_stops_the_session_and_leaves_later_batches_unacknowledged() -> None:
    events: list[tuple[str, int]] = []

    def send(data: list[int], session: dict[str, Any]) -> dict[str, Any]:
        if session["batch_seq"] == 3:
            raise ConnectionError("killed")
        return {}

    with pytest.raises(ConnectionError):
        _session(2, events, send).run([[i] for i in range(6)])
    acknowledged = [seq for kind, seq in events if kind == "ack"]
    assert acknowledged == [1, 2]  # batch 4 may have been sent, but stays recorded only (pending)


def _counted_session(
    events: list[tuple[str, int]], counted: int
) -> tuple[UploadSession[int], dict[int, Any]]:
    """A session flagging its last batch by ``counted`` rows; the ``session`` and ``data`` each batch went with."""
    batches: dict[int, Any] = {}

    def send(data: list[int], session: dict[str, Any]) -> dict[str, Any]:
        events.append(("sent", session["batch_seq"]))
        batches[session["batch_seq"]] = (list(data), session["last_batch_flag"])
        return {"num_received": len(batches)}

    session = _session(2, events, send)
    session.counted = lambda: counted
    return session, batches


def _prepared(events: list[tuple[str, int]], pages: int) -> Iterator[list[int]]:
    """One-row pages, each noted once it is prepared (handed to the session)."""
    for number in range(1, pages + 1):
        events.append(("prepared", number))
        yield [number]


def test_a_counted_session_sends_its_first_batch_before_the_second_page_is_prepared() -> None:
    events: list[tuple[str, int]] = []
    sent = threading.Event()
    session, batches = _counted_session(events, 3)
    plain_send = session.send

    def send(data: list[int], batch: dict[str, Any]) -> dict[str, Any]:
        answer = plain_send(data, batch)
        sent.set()
        return answer

    def pages() -> Iterator[list[int]]:
        for number, page in enumerate(_prepared(events, 3), start=1):
            yield page
            if number == 1:  # the next page is prepared only once the first batch went
                assert sent.wait(10), "the first batch waited for the second page"

    session.send = send
    result = session.run(pages())
    assert events.index(("sent", 1)) < events.index(("prepared", 2))
    assert {seq: last for seq, (_, last) in batches.items()} == {1: False, 2: False, 3: True}
    assert (result.batches, result.rows) == (3, 3)


def test_rows_beyond_the_count_are_sent_before_the_last_flag() -> None:
    # The count was too low (rows added between the count and the read): the page that reaches it is
    # checked by reading on, and no batch ever follows the flagged one.
    events: list[tuple[str, int]] = []
    session, batches = _counted_session(events, 2)
    result = session.run(_prepared(events, 4))
    assert {seq: last for seq, (_, last) in batches.items()} == {1: False, 2: False, 3: False, 4: True}
    assert (result.batches, result.rows) == (4, 4)
    assert [seq for kind, seq in events if kind == "ack"] == [1, 2, 3, 4]


def test_a_session_whose_pages_run_out_before_the_count_is_closed_by_one_more_batch() -> None:
    # The count was too high (rows rejected while preparing the last chunk): the last page went without
    # the flag, so a closing batch (its last row again, not journaled) ends the session, after every other.
    events: list[tuple[str, int]] = []
    session, batches = _counted_session(events, 5)
    result = session.run([number, number + 10] for number in (1, 2))
    assert batches == {1: ([1, 11], False), 2: ([2, 12], False), 3: ([12], True)}
    assert [seq for kind, seq in events if kind == "record"] == [1, 2]  # the closing batch adds nothing
    assert events.index(("sent", 3)) > events.index(("ack", 2))  # it goes alone, once every other landed
    assert (result.batches, result.rows, result.num_received) == (3, 4, 3)
