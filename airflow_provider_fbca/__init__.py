"""Apache Airflow provider that syncs warehouse audiences into Meta (Facebook) Custom Audiences."""

__version__ = "0.1.0"
