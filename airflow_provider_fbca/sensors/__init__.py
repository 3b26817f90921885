"""Sensors of airflow-provider-fbca."""
