"""Which audiences a sync may write to: customer-file audiences that are not flagged or mid-replace."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

#: The audience fields the checks read.
AUDIENCE_FIELDS = (
    "id",
    "account_id",
    "name",
    "subtype",
    "is_value_based",
    "operation_status",
    "customer_file_source",
)

FLAGGED = 471
REPLACE_IN_PROGRESS = 414


class AudienceNotSyncableError(ValueError):
    """The audience cannot take this sync; the message says why and what to do."""


def _status_code(audience: Mapping[str, Any]) -> int | None:
    status = audience.get("operation_status") or {}
    code = status.get("code", status.get("status")) if isinstance(status, Mapping) else status
    try:
        return int(code)
    except (TypeError, ValueError):
        return None


def check_audience_account(audience: Mapping[str, Any], ad_account_id: str | None) -> None:
    """Refuse an audience of another ad account than the one the sync works in.

    The state, the lease and the upload sessions (unique per ad account) are all the account's, and the
    connection's token may be meant for that account only.

    :param audience: the audience as read with :data:`AUDIENCE_FIELDS` (``account_id`` is digits).
    :param ad_account_id: the sync's ad account (``act_<digits>``): the operator's override, else the
        connection's.
    :raises AudienceNotSyncableError: the audience's ``account_id`` is another account.
    """
    owner = str(audience.get("account_id") or "").removeprefix("act_")
    expected = str(ad_account_id or "").removeprefix("act_")
    if owner and expected and owner != expected:
        raise AudienceNotSyncableError(
            f"Audience {audience.get('id')} belongs to ad account act_{owner}, not to act_{expected} (the "
            "operator's ad_account_id, else the connection's). Set ad_account_id='act_"
            f"{owner}' on the operator, or give an audience of act_{expected}."
        )


def check_audience(
    audience: Mapping[str, Any],
    *,
    sends_values: bool,
    ad_account_id: str | None = None,
    replace_is_ours: Callable[[], bool] | None = None,
) -> None:
    """Refuse an audience the sync must not write to, before anything is sent.

    :param audience: the audience as read with :data:`AUDIENCE_FIELDS`.
    :param sends_values: whether the mapping has a LOOKALIKE_VALUE column.
    :param ad_account_id: the sync's ad account; an audience of another account is refused.
    :param replace_is_ours: asked when the audience is being replaced (414): whether the replace is a
        full refresh of this sync that a killed run left open, which this run resumes.
    :raises AudienceNotSyncableError: another ad account's audience, not a customer-file audience, flagged
        (471), being replaced (414) by another run, or a value-based audience without values (or values for
        one that is not value-based).
    """
    check_audience_account(audience, ad_account_id)
    audience_id = audience.get("id")
    subtype = audience.get("subtype")
    if subtype not in (None, "CUSTOM"):
        raise AudienceNotSyncableError(
            f"Audience {audience_id} is a {subtype} audience; only customer-file audiences (subtype CUSTOM) "
            "take uploaded customer lists. Point the sync at a customer list audience, or let it create one."
        )
    code = _status_code(audience)
    if code == FLAGGED:
        raise AudienceNotSyncableError(
            f"Audience {audience_id} is flagged by Meta's integrity review (operation_status 471): uploads "
            "and edits are blocked. Review it in Ads Manager (its fields_violating_integrity_policy), or sync "
            "into another audience."
        )
    if code == REPLACE_IN_PROGRESS and not (replace_is_ours and replace_is_ours()):
        raise AudienceNotSyncableError(
            f"Audience {audience_id} is being replaced (operation_status 414): Meta refuses other uploads "
            "until the replace finishes (at most 90 minutes after it started). Retry later; Airflow's task "
            "retries with a delay do this."
        )
    value_based = bool(audience.get("is_value_based"))
    if value_based and not sends_values:
        raise AudienceNotSyncableError(
            f"Audience {audience_id} is value-based: every row needs a LOOKALIKE_VALUE. Map a value column "
            "(mapping={'value': '<column>', ...})."
        )
    if sends_values and not value_based:
        raise AudienceNotSyncableError(
            f"Audience {audience_id} is not value-based, so it takes no LOOKALIKE_VALUE. Remove the value "
            "column from the mapping, or sync into a value-based audience (is_value_based=True on creation)."
        )
