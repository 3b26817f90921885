"""Hooks of airflow-provider-fbca."""
