"""The report of one sync run: returned by the operator (so XCom holds it) and logged as a table.

It holds counts, reasons, key names and session ids only: never an identifier value, never a token.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_provider_fbca.sync.batches import SessionResult
from airflow_provider_fbca.sync.plan import SyncPlan
from airflow_provider_fbca.sync.rejects import fix_hint


@dataclass
class SyncReport:
    """What a run read, planned and sent."""

    audience_id: str
    mode: str
    match_keys: list[str]
    dry_run: bool = False
    full_refresh: bool = False
    rows_read: int = 0
    rows_prepared: int = 0
    rejected: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    dropped_values: Counter[str] = field(default_factory=Counter)
    plan: SyncPlan | None = None
    sessions: list[SessionResult] = field(default_factory=list)
    reconciled_rows: int = 0
    """Rows an earlier, killed run sent without an answer, folded into the state as possibly applied."""
    removals_refused: int = 0
    """Removal rows Meta refused for good: still owed, sent again by every later run."""
    owed_removals_sent: int = 0
    """Removal rows an earlier run owed (refused then), sent again by this run."""
    identifiers_withheld_shared: int = 0
    """Identifiers left out of removal rows because a row staying in the audience holds them."""
    removed_by_partition: dict[int, int] = field(default_factory=dict)
    """A full refresh of a partitioned audience: the people the replace drops from each partition's slice
    of the state it replaces (``removed`` is their sum, with any row only the unpartitioned key held)."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON-serializable report (the operator's return value)."""
        plan = self.plan
        return {
            "audience_id": self.audience_id,
            "mode": self.mode,
            "full_refresh": self.full_refresh,
            "dry_run": self.dry_run,
            "match_keys": list(self.match_keys),
            "rows_read": self.rows_read,
            "rows_prepared": self.rows_prepared,
            "added": plan.added if plan else 0,
            "updated": plan.updated if plan else 0,
            "updated_identifiers": plan.updated_identifiers if plan else 0,
            "removed": plan.removals if plan else 0,
            "unchanged": plan.unchanged if plan else 0,
            "non_members": plan.non_members if plan else 0,
            "skipped_by_mode": plan.skipped_by_mode if plan else 0,
            "rejected": self.rejected,
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "dropped_values_by_reason": dict(sorted(self.dropped_values.items())),
            "fix_hint": fix_hint(self.rejected_by_reason + self.dropped_values),
            "rows_sent": sum(session.rows for session in self.sessions),
            # Strings, as Meta writes them: 19-digit ids exceed JavaScript's 2**53, so Airflow's UI
            # would show a rounded, wrong id for an int in XCom.
            "session_ids": [str(session.session_id) for session in self.sessions],
            # The same ids by kind ("add", "remove", "replace"): the sensor's thresholds judge additions.
            "upload_sessions": _ids_by_kind(self.sessions),
            "sessions": [
                {**asdict(session), "session_id": str(session.session_id)} for session in self.sessions
            ],
            "num_received": sum(session.num_received for session in self.sessions),
            "num_invalid_entries": sum(session.num_invalid_entries for session in self.sessions),
            "reconciled_rows": self.reconciled_rows,
            "removals_refused": self.removals_refused,
            "owed_removals_sent": self.owed_removals_sent,
            "identifiers_withheld_shared": self.identifiers_withheld_shared,
            # Only where the state lay in slices: keys as text, as JSON (XCom) writes them.
            **(
                {"removed_by_partition": {str(k): n for k, n in self.removed_by_partition.items()}}
                if self.removed_by_partition
                else {}
            ),
        }


def _ids_by_kind(sessions: list[SessionResult]) -> dict[str, list[str]]:
    by_kind: dict[str, list[str]] = {}
    for session in sessions:
        by_kind.setdefault(session.kind, []).append(str(session.session_id))
    return by_kind


def format_report(report: dict[str, Any]) -> str:
    """Render a report dict as an aligned two-column table for the task log."""
    lines: list[tuple[str, str]] = []
    for name, value in report.items():
        if name == "sessions":
            for session in value:
                lines.append(
                    (
                        f"session {session['session_id']}",
                        f"{session['kind']}: {session['rows']} rows in {session['batches']} batch(es), "
                        f"received {session['num_received']}, invalid {session['num_invalid_entries']}",
                    )
                )
        elif isinstance(value, dict):
            lines.append((name, ", ".join(f"{key}: {count}" for key, count in value.items()) or "-"))
        elif isinstance(value, list):
            lines.append((name, ", ".join(str(item) for item in value) or "-"))
        else:
            lines.append((name, str(value)))
    width = max(len(name) for name, _ in lines)
    rule = "-" * (width + 2) + "+" + "-" * 40
    body = [f" {name.ljust(width)} | {value}" for name, value in lines]
    return "\n".join([rule, *body, rule])
