"""The operator's asset updates: "this audience was updated" for downstream DAGs scheduled on it.

Name the audience in ``outlets`` either as an ``Asset`` with its URI (``audience_uri(account, id)``, when
the id is known when the DAG is written) or through an ``AssetAlias``, to which each run adds the
audience's asset (when the audience is found or created by name).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.providers.common.compat.sdk import Asset, AssetAlias

from airflow_provider_fbca.assets import AUDIENCE_SCHEME, audience_uri, run_counts


def check_audience_outlets(outlets: Sequence[Any], ad_account_id: str, audience_id: str | None) -> None:
    """
    Refuse an audience asset in ``outlets`` that names another audience, before anything is sent.

    :param outlets: the task's outlets.
    :param ad_account_id: the ad account of the sync.
    :param audience_id: the audience of the sync (None while it does not exist: a dry run).
    """
    if audience_id is None:
        return
    expected = audience_uri(ad_account_id, audience_id)
    for outlet in outlets:
        if (
            isinstance(outlet, Asset)
            and outlet.uri.startswith(f"{AUDIENCE_SCHEME}://")
            and outlet.uri != expected
        ):
            raise ValueError(
                f"outlets name the audience asset {outlet.uri}, but this task syncs {expected}; "
                "fix the asset's URI, or use an AssetAlias when the audience id is not known in advance."
            )


def record_audience_update(
    outlets: Sequence[Any], outlet_events: Any, ad_account_id: str, report: Mapping[str, Any]
) -> None:
    """
    Describe the run in its asset events: the audience's asset (added to each ``AssetAlias``) with the
    run's counts as the event's extra. A dry run updated nothing and records nothing.

    :param outlets: the task's outlets.
    :param outlet_events: ``context["outlet_events"]``.
    :param ad_account_id: the ad account of the sync.
    :param report: the sync's report.
    """
    if report.get("dry_run") or not report.get("audience_id"):
        return
    uri = audience_uri(ad_account_id, str(report["audience_id"]))
    counts = run_counts(dict(report))
    for outlet in outlets:
        if isinstance(outlet, AssetAlias):
            outlet_events[outlet].add(Asset(uri=uri), extra=counts)
        elif isinstance(outlet, Asset) and outlet.uri == uri:
            outlet_events[outlet].extra.update(counts)
