"""Fixtures for the sandbox's tests: a sandbox on a manual clock, and a raw Graph API client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sandbox_support import SMALL_POPULATION, Graph

from airflow_provider_fbca.sandbox import ManualClock, Sandbox


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1_800_000_000.0)


@pytest.fixture
def sb(clock: ManualClock) -> Iterator[Sandbox]:
    with Sandbox(clock=clock, population=SMALL_POPULATION) as sandbox:
        yield sandbox


@pytest.fixture
def graph(sb: Sandbox) -> Graph:
    return Graph(sb)


@pytest.fixture
def audience_id(graph: Graph) -> str:
    return graph.create_audience()
