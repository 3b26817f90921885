"""How this provider names an audience outside Meta: Airflow assets and OpenLineage datasets.

One naming for both: the namespace ``facebook-custom-audiences://<act_ad account>`` and the audience id as
the name, so an asset's URI is ``facebook-custom-audiences://act_123/238...``. Plain Python.
"""

from __future__ import annotations

AUDIENCE_SCHEME = "facebook-custom-audiences"


def audience_namespace(ad_account_id: str) -> str:
    """
    The namespace of an ad account's audiences: ``facebook-custom-audiences://act_123``.

    :param ad_account_id: the ad account, ``act_123`` or ``123``.
    """
    return f"{AUDIENCE_SCHEME}://act_{str(ad_account_id).removeprefix('act_')}"


def audience_uri(ad_account_id: str, audience_id: str) -> str:
    """
    The URI of an audience: ``facebook-custom-audiences://act_123/<audience id>``; an asset's URI.

    :param ad_account_id: the ad account, ``act_123`` or ``123``.
    :param audience_id: the Custom Audience's id.
    """
    return f"{audience_namespace(ad_account_id)}/{audience_id}"


# The counts of a sync's report that describe what a run did to the audience: an asset event's extra and
# the OpenLineage output facet carry these, never an identifier.
RUN_COUNT_KEYS = (
    "rows_read",
    "added",
    "updated",
    "removed",
    "unchanged",
    "rejected",
    "rows_sent",
    "num_received",
    "num_invalid_entries",
)


def run_counts(report: dict[str, object]) -> dict[str, int]:
    """
    The run's counts, from the sync's report.

    :param report: the report the operator returns (``SyncReport.as_dict()`` plus the audience).
    """
    return {key: int(report[key]) for key in RUN_COUNT_KEYS if isinstance(report.get(key), int)}
