"""The trigger tests share the sensor tests' fixtures: a sandbox whose sessions take a moment, an audience."""

from __future__ import annotations

from tests.sensors.conftest import audience_id, hook, sandbox

__all__ = ["audience_id", "hook", "sandbox"]
