"""
Test-only imports that moved between the supported Airflow releases (3.0 to 3.3).

The provider's own imports go through ``apache-airflow-providers-common-compat`` (see
``airflow_provider_fbca/version_compat.py``); these are the few the tests need beyond it.
"""

from __future__ import annotations

from airflow_provider_fbca.version_compat import AIRFLOW_V_3_1_PLUS

if AIRFLOW_V_3_1_PLUS:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.execution_time import macros
else:
    from airflow import macros
    from airflow.models.dagbag import DagBag

__all__ = ["DagBag", "macros"]
