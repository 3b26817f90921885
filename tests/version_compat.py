"""
Test-only imports that moved between the supported Airflow releases (3.0 to 3.3).

The provider's own imports go through ``apache-airflow-providers-common-compat`` (see
``airflow_provider_fbca/version_compat.py``); these are the few the tests need beyond it.
"""

from __future__ import annotations

from airflow_provider_fbca.links.ads_manager import AUDIENCE_URL_XCOM_KEY
from airflow_provider_fbca.version_compat import get_base_airflow_version_tuple

# Newest path first; the older one where the release does not have it yet.
try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:
    from airflow.models.dagbag import DagBag
try:
    from airflow.sdk.definitions.timetables.assets import AssetTriggeredTimetable
except ImportError:
    from airflow.timetables.simple import AssetTriggeredTimetable
try:
    from airflow.sdk.execution_time import macros
except ImportError:
    from airflow import macros

# The browser test drives the UI of the Airflow that constraints.txt pins (3.3). Older UIs draw the
# same served form differently (3.0.0: the type list shows connection types, extra password fields are
# plain text: docs/airflow-versions.md). Every release's served form is checked in
# tests/test_connection_form.py.
BROWSER_TEST_UI = get_base_airflow_version_tuple() >= (3, 3, 0)
# Where a test finds the Ads Manager link of a task run under `airflow dags test`: 3.3 stores the link
# rendered (`_link_<class>`); 3.0.0's `dags test` stores none, so there the URL the link is rendered
# from (pushed by the task on every release) is read instead. 3.1 and 3.2 are not checked: the source key.
LINK_XCOM_KEY = (
    "_link_AudienceInAdsManagerLink"
    if get_base_airflow_version_tuple() >= (3, 3, 0)
    else AUDIENCE_URL_XCOM_KEY
)
# `airflow connections test` exits 1 on a failed test from 3.3; before, it prints the failure and exits 0.
CONNECTIONS_TEST_EXITS_1_ON_FAILURE = get_base_airflow_version_tuple() >= (3, 3, 0)

__all__ = [
    "BROWSER_TEST_UI",
    "CONNECTIONS_TEST_EXITS_1_ON_FAILURE",
    "LINK_XCOM_KEY",
    "AssetTriggeredTimetable",
    "DagBag",
    "macros",
]
