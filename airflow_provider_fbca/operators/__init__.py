"""Operators of airflow-provider-fbca."""
