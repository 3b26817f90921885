"""The "Audience in Ads Manager" extra link of SyncAudienceOperator and AudienceUploadSensor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperatorLink, XCom

from airflow_provider_fbca.hooks.graph_errors import ADS_MANAGER_AUDIENCE_URL

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import BaseOperator, TaskInstanceKey

# The XCom key the task pushes the audience's URL under, as soon as it knows the audience.
AUDIENCE_URL_XCOM_KEY = "audience_url"


def audience_url(ad_account_id: str, audience_id: str) -> str:
    """
    The audience's page in Ads Manager.

    :param ad_account_id: the ad account, ``act_123`` or ``123``.
    :param audience_id: the Custom Audience's id.
    """
    return ADS_MANAGER_AUDIENCE_URL.format(
        account=ad_account_id.removeprefix("act_"), audience_id=audience_id
    )


def publish_audience_link(
    context: Mapping[str, Any], ad_account_id: str | None, audience_id: str | None
) -> None:
    """
    Push the audience's Ads Manager URL to XCom, so the link works even on a run that fails later.

    Does nothing outside a task run (no ``ti`` in the context) or before the audience exists.

    :param context: the task's context.
    :param ad_account_id: the ad account, ``act_123`` or ``123``.
    :param audience_id: the Custom Audience's id.
    """
    ti = context.get("ti")
    # Jinja renders a missing id (a dry run's XCom) as "None".
    if ti is None or not ad_account_id or str(audience_id or "None") == "None":
        return
    ti.xcom_push(key=AUDIENCE_URL_XCOM_KEY, value=audience_url(ad_account_id, str(audience_id)))


class AudienceInAdsManagerLink(BaseOperatorLink):
    """Opens the task's audience in Ads Manager (Audiences), from the URL the task pushed to XCom."""

    name = "Audience in Ads Manager"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """
        The URL the task pushed, or ``""`` when it never knew its audience (a dry run, say).

        :param operator: the task.
        :param ti_key: the task instance.
        """
        return XCom.get_value(ti_key=ti_key, key=AUDIENCE_URL_XCOM_KEY) or ""
