"""A seeded soak test: random upload faults and random model changes between failed attempts.

Every round changes the model at random (people arrive, leave, change e-mail, move into a shared family
inbox), arms random fault rules on the upload endpoints (transient errors, hard errors, refused removals,
connections dropped before or after Meta processed the request, delays) and runs the sync until a run
succeeds, changing the model again after each failed attempt. Each success must leave the audience holding
exactly the model, and the state exactly the audience. Real HTTP (the hook against the sandbox) and the
real state database; the hook's retry waits are skipped (an injected sleep), so it runs in seconds.

``FBCA_SOAK_SEED=<n>`` replays one seed.
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest

from airflow_provider_fbca.hooks.custom_audiences import FacebookCustomAudiencesHook
from airflow_provider_fbca.identifiers import RowPreparer, prepare
from airflow_provider_fbca.sync.engine import SyncOptions, SyncRun
from airflow_provider_fbca.sync.state import StateStore, decode_identifiers

SEEDS = [int(os.environ["FBCA_SOAK_SEED"])] if "FBCA_SOAK_SEED" in os.environ else [1, 12]
ROUNDS = 12
POOL = 60
FAMILY = "family@example.com"
ERRORS = {
    "transient": ({"code": 2, "is_transient": True, "message": "Service temporarily unavailable"}, 500),
    "refused": ({"code": 200, "error_subcode": 1870047, "message": "Audience Size too Low"}, 400),
    "hard": ({"code": 100, "message": "Invalid parameter"}, 400),
}


def random_fault(rng: random.Random) -> dict[str, Any]:
    """One fault rule on an upload request (add, remove or replace)."""
    method, path = rng.choice([("POST", "/users$"), ("DELETE", "/users$"), ("POST", "/usersreplace$")])
    rule: dict[str, Any] = {"method": method, "path": path, "times": rng.randint(1, 3)}
    # Lost answers weigh double: they leave Meta holding what the run never heard back about.
    action = rng.choice(["transient", "refused", "hard", "disconnect", "lost", "lost", "delay"])
    if action in ERRORS:
        rule["error"], rule["http_status"] = ERRORS[action]
    elif action == "disconnect":
        rule["disconnect"] = True
    elif action == "lost":
        rule["disconnect"] = "after"  # Meta applied it; the answer never came back
    else:
        rule["delay_s"] = rng.uniform(0.001, 0.02)
    return rule


def change(rng: random.Random, model: dict[str, str]) -> None:
    """Random arrivals, departures, new e-mails and moves into the shared family inbox."""
    for _ in range(rng.randint(1, 8)):
        key = f"cust-{rng.randrange(POOL):03d}"
        roll = rng.random()
        if roll < 0.35:
            model.pop(key, None)
        elif roll < 0.5:
            model[key] = FAMILY
        else:
            model[key] = f"{key}.{rng.randrange(3)}@example.com"


def sync(store: StateStore, hook: Any, audience_id: str, model: dict[str, str], full_refresh: bool) -> None:
    options = SyncOptions(
        audience_id,
        f"soak:{audience_id}",
        full_refresh=full_refresh,
        max_removal_fraction=None,
        batch_size=7,
        source_key_index=0,
    )
    run = SyncRun(store, hook, RowPreparer(["external_id", "email"]), options)
    rows = sorted(model.items())
    run.run([rows[i : i + 20] for i in range(0, len(rows), 20)])


@pytest.mark.parametrize("seed", SEEDS)
def test_random_faults_and_model_changes_end_with_the_model(
    seed: int, store: StateStore, sandbox: Any, fb_conn_id: str
) -> None:
    rng = random.Random(seed)
    hook = FacebookCustomAudiencesHook(fb_conn_id, max_retries=1, sleep=lambda _: None)
    audience_id = hook.create_audience(f"Soak {seed}")
    model: dict[str, str] = {}
    change(rng, model)
    failures = 0
    for round_ in range(ROUNDS):
        change(rng, model)
        sandbox.set_faults([random_fault(rng) for _ in range(rng.randint(0, 3))])
        full_refresh = rng.random() < 0.2 and bool(model)
        for _attempt in range(30):
            try:
                sync(store, hook, audience_id, model, full_refresh)
                break
            except Exception as error:  # any failure: the next attempt must repair it
                last_error = error
                store.conn.rollback()
                failures += 1
                if rng.random() < 0.6:
                    change(rng, model)
        else:
            pytest.fail(
                f"seed {seed}, round {round_}: no attempt succeeded; the last failed with {last_error!r}"
            )
        sandbox.clear_faults()
        wanted = sorted((key, prepare("EMAIL", email)) for key, email in model.items())
        got = sorted((m["EXTERN_ID"], m["EMAIL"]) for m in sandbox.members(audience_id))
        assert got == wanted, f"seed {seed}, round {round_}"
        state = store.iter_rows(f"soak:{audience_id}")
        stored = sorted((key, decode_identifiers(ids)[1]) for key, _, ids, _ in state)
        assert stored == wanted, f"seed {seed}, round {round_}: the state is not the audience"
    assert failures > 0  # the faults did bite
