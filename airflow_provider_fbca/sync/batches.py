"""Upload sessions: pages of at most 10,000 rows, numbered, the last one flagged, each acknowledged.

The state follows Meta's acknowledgements batch by batch, so a run that fails or is killed half way loses
nothing: the retry plans again from the state and sends only what was not acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

#: Meta's limit of rows per request, for /users and /usersreplace alike.
MAX_BATCH_SIZE = 10_000

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


@dataclass
class UploadSession(Generic[Row]):
    """One upload session: sends pages in order and acknowledges each one Meta accepted.

    :param session_id: the session's id (positive int64, fresh for each run).
    :param kind: ``add``, ``remove`` or ``replace``, for the report.
    :param total: the number of rows the pages hold: it sets ``estimated_num_total`` and tells which batch
        carries ``last_batch_flag``.
    :param send: sends one page with its ``session`` object and returns Meta's response.
    :param acknowledge: called with each page once Meta accepted it (updates the state).
    """

    session_id: int
    kind: str
    total: int
    send: Callable[[list[Row], dict[str, Any]], dict[str, Any]]
    acknowledge: Callable[[list[Row]], None]

    def run(self, pages: Iterable[list[Row]]) -> SessionResult:
        result = SessionResult(self.session_id, self.kind)
        for page in pages:
            if len(page) > MAX_BATCH_SIZE:
                raise ValueError(f"A batch holds {len(page)} rows; Meta takes at most {MAX_BATCH_SIZE}.")
            session = {
                "session_id": self.session_id,
                "batch_seq": result.batches + 1,
                "last_batch_flag": result.rows + len(page) >= self.total,
                "estimated_num_total": self.total,
            }
            response = self.send(page, session)
            self.acknowledge(page)
            result.batches += 1
            result.rows += len(page)
            result.num_received = _as_int(response.get("num_received"), result.rows)
            # Both counters are running totals of the session (as Meta documents num_received).
            result.num_invalid_entries = _as_int(response.get("num_invalid_entries"), 0)
        return result


def _as_int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
