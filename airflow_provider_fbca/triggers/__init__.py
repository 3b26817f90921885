"""Triggers of airflow-provider-fbca."""
