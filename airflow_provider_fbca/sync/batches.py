"""Upload sessions: pages of at most 10,000 rows, numbered, the last one flagged, each acknowledged.

Each page is recorded as pending before it is sent and settled when Meta answers (see :mod:`.journal`), so
a run that fails or is killed half way loses nothing: the retry reconciles what was in flight, plans again
from the state and sends only what Meta may not hold.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from itertools import chain
from typing import Any, Generic, TypeVar

from airflow_provider_fbca.hooks.upload_payload import MAX_ROWS_PER_REQUEST

#: Meta's limit of rows per request, for /users and /usersreplace alike.
MAX_BATCH_SIZE = MAX_ROWS_PER_REQUEST
#: How often (seconds) the heartbeat runs while a batch is in flight: a request can wait out a long
#: rate-limit lockout in the hook's retries, and the run must keep its lease meanwhile.
HEARTBEAT_S = 10.0
#: The most upload requests in flight at once: the hook's HTTP connection pool holds four.
MAX_IN_FLIGHT = 4

Row = TypeVar("Row")


@dataclass
class SessionResult:
    """What one upload session sent and what Meta answered.

    :param kind: ``add``, ``remove`` or ``replace``.
    :param num_received: Meta's running ``num_received`` after the last batch.
    :param num_invalid_entries: Meta's running ``num_invalid_entries`` after the last batch.
    """

    session_id: int
    kind: str
    batches: int = 0
    rows: int = 0
    num_received: int = 0
    num_invalid_entries: int = 0
    refused: int = 0
    """Rows of batches Meta refused for good (removals only; see ``UploadSession.refuse``)."""


@dataclass
class UploadSession(Generic[Row]):
    """One upload session: sends pages in order and acknowledges each one Meta accepted.

    Up to ``max_in_flight`` batches are in flight while the next page is read and encoded, so the work of
    the run overlaps Meta's (or the sandbox's) processing. Each batch is recorded before it is sent and
    acknowledged only once Meta accepted it, in order: a later batch's answer waits for the earlier ones.

    :param session_id: the session's id (positive int64, fresh for each run).
    :param kind: ``add``, ``remove`` or ``replace``, for the report.
    :param total: the number of rows the pages hold: it sets ``estimated_num_total`` and tells which batch
        carries ``last_batch_flag``.
    :param encode: turns a page into the request's ``data`` rows.
    :param send: sends one batch's ``data`` with its ``session`` object and returns Meta's response.
    :param acknowledge: called with each page and its ``session`` object once Meta accepted it (updates
        the state).
    :param record: called with each page and its ``session`` object right before it is sent (records it
        as pending: write-ahead).
    :param refuse: called with a page, its ``session`` object and the error when Meta's answer is an
        error; returns True when the refusal was recorded and the session goes on with the next page.
    :param max_in_flight: batches sent at once (the last batch always goes alone, and so does the first
        with ``first_alone``).
    :param first_alone: the first batch must land before any other is sent: a replace's batch 1 starts its
        session, and Meta refuses any other batch before it (2650/1870147). ``/users`` sessions have no such
        rule, so their first batches go together and the window is full from the start.
    :param first_batch_seq: the ``batch_seq`` of the first page (a replace resumed after a kill goes on
        after the batches already sent).
    :param heartbeat: called every ``heartbeat_s`` seconds while a batch is in flight, in the caller's
        thread (so it may use the state connection): keeps the run's lease alive.
    :param heartbeat_s: the period of the heartbeat.
    :param counted: the rows the pages hold as counted so far (``total`` less the rows found missing, e.g.
        rejected while preparing), which flags the last batch by count: each page is sent as soon as it is
        read, not once the next one is (a streamed page is prepared first). A count that was too low is
        caught at the page it calls last, by reading on; one too high ends the session with a closing
        batch (see :meth:`_close`). None: every page waits for the next to be read (one page ahead).
    """

    session_id: int
    kind: str
    total: int
    encode: Callable[[list[Row]], list[Any]]
    send: Callable[[list[Any], dict[str, Any]], dict[str, Any]]
    acknowledge: Callable[[list[Row], dict[str, Any]], None]
    heartbeat: Callable[[], None] | None = None
    heartbeat_s: float = HEARTBEAT_S
    record: Callable[[list[Row], dict[str, Any]], None] | None = None
    refuse: Callable[[list[Row], dict[str, Any], Exception], bool] | None = None
    first_batch_seq: int = 1
    max_in_flight: int = 1
    first_alone: bool = False
    counted: Callable[[], int] | None = None

    def run(self, pages: Iterable[list[Row]]) -> SessionResult:
        """Send the pages in order, at most ``max_in_flight`` at once; acknowledge each in order.

        The last batch goes alone (it closes the session, so every other batch must have landed), and so
        does the first with ``first_alone`` (a replace's batch 1 must land before any other). Each page is
        recorded (``record``) before it is sent, so a kill leaves every page in flight pending. With more
        than one in flight, a page is recorded before waiting for room, the last one too: the closing batch
        then goes the moment every other is acknowledged, its journal write done while they flew. One at a
        time, and the batch waiting for ``first_alone``'s opening one, are recorded once they have room.
        """
        result = SessionResult(self.session_id, self.kind)
        in_flight: deque[tuple[Future[dict[str, Any]], list[Row], dict[str, Any]]] = deque()
        first = self.first_batch_seq
        flagged = _flag_last(pages) if self.counted is None else _flag_by_count(pages, self.counted)
        session: dict[str, Any] | None = None
        data: list[Any] = []
        with ThreadPoolExecutor(max_workers=self.max_in_flight, thread_name_prefix="fbca-upload") as sender:
            for batch_seq, (page, last) in enumerate(flagged, start=first):
                if len(page) > MAX_BATCH_SIZE:
                    raise ValueError(f"A batch holds {len(page)} rows; Meta takes at most {MAX_BATCH_SIZE}.")
                session = {
                    "session_id": self.session_id,
                    "batch_seq": batch_seq,
                    "last_batch_flag": last,
                    "estimated_num_total": self.total,
                }
                data = self.encode(page)
                # The last batch waits for every other; with first_alone, the second waits for the first.
                opened = self.first_alone and batch_seq == first + 1
                room = 0 if last or opened else self.max_in_flight - 1
                # Recorded while the batches before it are in flight, so that the journal's write is not on
                # the round trip's path: recorded and not yet sent, it is pending, as if in flight. The
                # last batch too (it only goes once every other landed), but for one at a time, and for the
                # batch waiting for the session's opening one (a replace's first answer clears the state).
                early = self.max_in_flight > 1 and not opened
                if early and self.record is not None:
                    self.record(page, session)
                answered = self._make_room(in_flight, room, result)
                if not early and self.record is not None:
                    self.record(page, session)
                in_flight.append((sender.submit(self.send, data, session), page, session))
                for entry in answered:  # acknowledged (a state write) while the batch just sent flies
                    self._settle(*entry, result)
            if session is not None and not session["last_batch_flag"]:
                self._close(sender, in_flight, data, session, result)
            while in_flight:
                self._settle(*in_flight.popleft(), result)
        return result

    def _close(
        self,
        sender: ThreadPoolExecutor,
        in_flight: deque[tuple[Future[dict[str, Any]], list[Row], dict[str, Any]]],
        data: list[Any],
        session: dict[str, Any],
        result: SessionResult,
    ) -> None:
        """End a session whose pages ran out before its count: the last page's last row sent again, alone,
        flagged as the last batch (Meta takes no batch without rows; adding a person twice changes nothing).

        Nothing is journaled for it: its row is the last page's, acknowledged before it goes (it waits for
        every other batch, as a last batch does), so a kill meanwhile loses nothing but the closing flag.

        :param data: the last batch's ``data``.
        :param session: the last batch's ``session`` object.
        """
        self._make_room(in_flight, 0, result)
        closing = {**session, "batch_seq": session["batch_seq"] + 1, "last_batch_flag": True}
        answer = sender.submit(self.send, data[-1:], closing)
        self._landed(answer)
        response = answer.result()  # an error goes up, as any batch's
        result.batches += 1
        result.num_received = _as_int(response.get("num_received"), result.num_received)
        result.num_invalid_entries = _as_int(response.get("num_invalid_entries"), result.num_invalid_entries)

    def _make_room(
        self,
        in_flight: deque[tuple[Future[dict[str, Any]], list[Row], dict[str, Any]]],
        room: int,
        result: SessionResult,
    ) -> list[tuple[Future[dict[str, Any]], list[Row], dict[str, Any]]]:
        """Wait until at most ``room`` batches are in flight; the batches that landed, still to acknowledge.

        A batch going with others in flight is sent as soon as the oldest batch landed: acknowledging that
        one (recording its rows in the state) waits until the next batch is on its way, off the round
        trip's path. The next batch was recorded before it waited, so a kill meanwhile leaves both pending,
        as if both were in flight. A batch going alone is sent once every other is acknowledged, and so is
        any batch after an error (raised, or a refusal recorded): nothing goes out past a failed batch.
        """
        answered: list[tuple[Future[dict[str, Any]], list[Row], dict[str, Any]]] = []
        while len(in_flight) > room:
            entry = in_flight.popleft()
            if room and self._landed(entry[0]):
                answered.append(entry)
                continue
            for earlier in answered:
                self._settle(*earlier, result)
            answered.clear()
            self._settle(*entry, result)
        return answered

    def _landed(self, answer: Future[dict[str, Any]]) -> bool:
        """Wait for a batch's answer (heartbeating meanwhile); whether Meta accepted it."""
        while self.heartbeat is not None and not wait([answer], timeout=self.heartbeat_s).done:
            self.heartbeat()
        return answer.exception() is None

    def _settle(
        self, answer: Future[dict[str, Any]], page: list[Row], session: dict[str, Any], result: SessionResult
    ) -> None:
        """Wait for a batch's answer, then acknowledge it (or record its refusal, or raise its error)."""
        self._landed(answer)
        try:
            response = answer.result()
        except Exception as error:
            if self.refuse is None or not self.refuse(page, session, error):
                raise
            result.batches += 1
            result.refused += len(page)
            return
        self.acknowledge(page, session)
        result.batches += 1
        result.rows += len(page)
        result.num_received = _as_int(response.get("num_received"), result.rows)
        # Both counters are running totals of the session (as Meta documents num_received).
        result.num_invalid_entries = _as_int(response.get("num_invalid_entries"), 0)


def _flag_last(pages: Iterable[list[Row]]) -> Iterator[tuple[list[Row], bool]]:
    """Each page with whether it is the last: one page read ahead, so a streamed session whose length is
    only estimated still flags its true last batch."""
    iterator = iter(pages)
    current = next(iterator, None)
    while current is not None:
        following = next(iterator, None)
        yield current, following is None
        current = following


def _flag_by_count(
    pages: Iterable[list[Row]], counted: Callable[[], int]
) -> Iterator[tuple[list[Row], bool]]:
    """Each page with whether it is the last, by count: a page short of the count is handed on at once
    (never last); the page that reaches it is checked by reading on, so a count too low flags the true
    last page all the same (and the pages after it go as :func:`_flag_last` hands them). A count too high
    flags none: the caller closes the session.

    :param counted: the rows the pages hold, as counted when each page is read.
    """
    iterator = iter(pages)
    rows = 0
    for page in iterator:
        rows += len(page)
        if rows < counted():
            yield page, False
            continue
        yield from _flag_last(chain((page,), iterator))
        return


def _as_int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
