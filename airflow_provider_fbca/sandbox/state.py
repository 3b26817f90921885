"""What the sandbox remembers: tokens, ad accounts, audiences, their members and upload sessions.

Plain Python with no HTTP in it: :mod:`.graph` maps requests onto these objects. Times are unix seconds
read from an injectable clock, so tests can cross the usersreplace window or a processing delay at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_fbca.sandbox.members import MemberStore

Clock = Callable[[], float]

REPLACE_WINDOW_S = 90 * 60
DEFAULT_SCOPES = ("ads_management", "ads_read", "business_management")
# Below this many matched people the audience is too small to deliver (delivery_status 300): Meta's
# minimum for a lookalike seed; its API docs state none for delivery.
MIN_DELIVERABLE_SIZE = 100
# Below this many matched people Meta shows no figure, only "below 1,000": both bounds are 1,000.
SMALL_AUDIENCE_SIZE = 1000
# operation_status 412 / 411: shares past which Meta warns (it publishes no thresholds).
MANY_INVALID_SHARE = 0.5
LOW_MATCH_SHARE = 0.1


class ManualClock:
    """
    A clock tests move by hand: ``clock.advance(5400)`` crosses the usersreplace window at once.

    :param start: the unix time the clock starts at.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """
        Move the clock forward and return the new time.

        :param seconds: how far to move it.
        """
        self.now += seconds
        return self.now

    def set(self, now: float) -> None:
        """
        Set the clock to a unix time.

        :param now: the new time.
        """
        self.now = float(now)


def system_clock() -> float:
    """The real time, in unix seconds."""
    return time.time()


@dataclass
class Token:
    """An access token the sandbox knows."""

    token: str
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    expires_at: float | None = None
    valid: bool = True
    issued_at: float = 0.0
    user_id: str = "1000000000099"
    kind: str = "USER"


@dataclass
class AdAccount:
    """An ad account and whether its business accepted the Custom Audience terms."""

    digits: str
    name: str
    terms_accepted: bool = True
    # EXTERN_ID -> population person, learned from uploads that matched (Meta keeps them per ad account)
    extern_ids: dict[str, int] = field(default_factory=dict)


@dataclass
class UploadSession:
    """One upload session of an audience, as ``GET /{audience_id}/sessions`` reports it."""

    session_id: str
    kind: str
    start_time: float
    num_received: int = 0
    num_matched: int = 0
    num_invalid_entries: int = 0
    estimated_num_total: int | None = None
    closed_at: float | None = None

    def finished(self, now: float, delay_s: float) -> bool:
        """
        Tell whether the session is closed and done processing.

        :param now: the current time.
        :param delay_s: how long a closed session takes to finish processing.
        """
        return self.closed_at is not None and now >= self.closed_at + delay_s

    def view(self, now: float, delay_s: float) -> dict[str, str]:
        """
        Return the session as Meta types it: every value a string.

        :param now: the current time.
        :param delay_s: how long a closed session takes to finish processing.
        """
        finished = self.finished(now, delay_s)
        if finished:
            progress = 100
        elif self.closed_at is not None:
            progress = 50 + int(49 * (now - self.closed_at) / delay_s)
        elif self.estimated_num_total:
            progress = min(49, self.num_received * 50 // self.estimated_num_total)
        else:
            progress = 0
        return {
            "session_id": self.session_id,
            "start_time": str(int(self.start_time)),
            "end_time": str(int(self.closed_at + delay_s)) if finished and self.closed_at else "0",
            "num_received": str(self.num_received),
            "num_matched": str(self.num_matched) if finished else "-1",
            "num_invalid_entries": str(self.num_invalid_entries),
            "progress": str(progress),
            "stage": "finished" if finished else "processing",
        }


@dataclass
class ReplaceRun:
    """A running usersreplace: the new members are staged until the last batch (or the window ends)."""

    session_id: str
    started_at: float
    schema: tuple[str, ...]
    staged: MemberStore = field(default_factory=MemberStore)


@dataclass
class Audience:
    """A customer-file custom audience."""

    id: str
    account_digits: str
    name: str
    created_seq: int
    time_created: int
    customer_file_source: str | None = None
    description: str | None = None
    subtype: str = "CUSTOM"
    retention_days: int | None = None
    is_value_based: bool = False
    opt_out_link: str | None = None
    time_updated: int = 0
    time_content_updated: int | None = None
    flagged: bool = False
    replace_failed: bool = False
    members: MemberStore = field(default_factory=MemberStore)
    sessions: dict[str, UploadSession] = field(default_factory=dict)
    replace: ReplaceRun | None = None
    # session_id -> "finished" | "expired", for the 2650 subcodes of late batches
    replace_outcomes: dict[str, str] = field(default_factory=dict)
    schemas_seen: set[tuple[str, ...]] = field(default_factory=set)

    def operation_status(self, now: float = 0.0, delay_s: float = 0.0) -> dict[str, Any]:
        """
        Meta's ``operation_status`` as it follows from the audience's state and its last upload.

        :param now: the current time (sessions closed less than ``delay_s`` ago are still populating).
        :param delay_s: the processing delay.
        """
        if self.flagged:
            return {
                "code": 471,
                "description": "This audience has been flagged for violating Meta's policies.",
            }
        if self.replace is not None:
            return {"code": 414, "description": "Replacing the audience's users is in progress."}
        if self.replace_failed:
            return {"code": 415, "description": "The last replace of the audience's users did not complete."}
        if not self.sessions:
            return {"code": 410, "description": "No upload: no customer data has been uploaded yet."}
        if not all(session.finished(now, delay_s) for session in self.sessions.values()):
            return {"code": 441, "description": "The audience is being populated with the latest upload."}
        last = list(self.sessions.values())[-1]
        if last.num_received and last.num_invalid_entries > MANY_INVALID_SHARE * last.num_received:
            return {
                "code": 412,
                "description": "Many entries of the last upload were invalid (badly hashed or formatted).",
            }
        if len(self.members) and self.members.matched_people() < LOW_MATCH_SHARE * len(self.members):
            return {"code": 411, "description": "Low match rate: few uploaded entries matched people."}
        return {"code": 200, "description": "Normal"}

    def delivery_status(self) -> dict[str, Any]:
        """Meta's ``delivery_status``: ready, or too few matched people to deliver."""
        if self.members.matched_people() < MIN_DELIVERABLE_SIZE:
            return {"code": 300, "description": "This audience is too small to use."}
        return {"code": 200, "description": "This audience is ready for use."}

    def approximate_bounds(self) -> tuple[int, int]:
        """
        The size range Meta shows, from the distinct people the members match.

        Below 1,000 people Meta gives no figure (both bounds 1,000, "below 1,000" in Ads Manager);
        above, the count rounded to two significant digits, one step either side (5,000: 4,900-5,100).
        """
        size = self.members.matched_people()
        if size < SMALL_AUDIENCE_SIZE:
            return SMALL_AUDIENCE_SIZE, SMALL_AUDIENCE_SIZE
        step = 10 ** (len(str(size)) - 2)
        centre = (size + step // 2) // step * step
        return max(SMALL_AUDIENCE_SIZE, centre - step), centre + step

    def data_source(self) -> dict[str, Any]:
        """Meta's ``data_source``, from the schemas uploaded so far."""
        if not self.schemas_seen:
            return {"type": "UNKNOWN", "sub_type": "ANYTHING", "creation_params": "[]"}
        keys = set().union(*self.schemas_seen)
        if keys == {"EXTERN_ID"}:
            sub_type = "EXTERNAL_IDS"
        elif "EXTERN_ID" in keys:
            sub_type = "EXTERNAL_IDS_MIX"
        elif keys == {"MADID"}:
            sub_type = "MOBILE_ADVERTISER_IDS"
        else:
            sub_type = "MULTI_HASHES" if len(keys) > 1 else "HASHES"
        return {"type": "FILE_IMPORTED", "sub_type": sub_type, "creation_params": "[]"}


@dataclass
class SandboxState:
    """Everything one sandbox knows; guarded by the server's lock."""

    clock: Clock = system_clock
    processing_delay_s: float = 0.0
    # removals that would leave fewer matched people than this are refused (200/1870047); 0: never
    removal_floor: int = 0
    tokens: dict[str, Token] = field(default_factory=dict)
    accounts: dict[str, AdAccount] = field(default_factory=dict)
    audiences: dict[str, Audience] = field(default_factory=dict)
    next_audience_seq: int = 1
    next_session_seq: int = 1

    def now(self) -> float:
        """The current time on the sandbox's clock."""
        return float(self.clock())

    def new_audience_id(self) -> tuple[str, int]:
        """Return a fresh numeric audience id and its creation sequence number."""
        seq = self.next_audience_seq
        self.next_audience_seq += 1
        return str(23850000000000000 + seq), seq

    def new_session_id(self) -> str:
        """Return a session id for an upload that did not name one (Meta assigns one)."""
        seq = self.next_session_seq
        self.next_session_seq += 1
        return str(7000000000000 + seq)
