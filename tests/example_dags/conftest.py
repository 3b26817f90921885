"""Fixtures for the example DAGs and the demo: a migrated Airflow home, a warehouse, a sandbox, a DAG runner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from example_dag_support import (
    POPULATION,
    POPULATION_SEED,
    WAREHOUSE_CUSTOMERS,
    DagRunner,
    build_warehouse,
    demo,
    generate,
)


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated Airflow home (SQLite metadata) for every ``airflow dags test`` of the session."""
    home = tmp_path_factory.mktemp("dags-airflow-home")
    demo.prepare_metadata_db(demo.airflow_env(home), home / "migrate.log")
    return home


@pytest.fixture
def customers() -> list[dict[str, Any]]:
    return generate(WAREHOUSE_CUSTOMERS, seed=42)


@pytest.fixture
def warehouse(tmp_path: Path, customers: list[dict[str, Any]]) -> Path:
    """A fresh SQLite warehouse (customers, orders, memberships) for one test."""
    path = tmp_path / "warehouse.db"
    build_warehouse(path, customers, seed=3)
    return path


@pytest.fixture
def dag_sandbox() -> Iterator[Any]:
    """A sandbox whose sessions take a moment to process, so the sensors really wait."""
    from airflow_provider_fbca.sandbox import Sandbox

    with Sandbox(population=POPULATION, seed=POPULATION_SEED, processing_delay_s=0.5) as sandbox:
        yield sandbox


@pytest.fixture
def dag_runner(airflow_home: Path, warehouse: Path, dag_sandbox: Any) -> DagRunner:
    return DagRunner(airflow_home, warehouse, dag_sandbox)
