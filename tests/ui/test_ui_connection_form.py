"""The Facebook Custom Audiences connection form, as a user sees it in Airflow's UI (headless Chromium).

The form is declared in the provider info (``conn-fields`` / ``ui-field-behaviour``); only a real browser
against a real API server shows that Airflow's React UI renders it: relabelled standard fields, the hidden
ones gone, the extra fields with their labels, and the app secret masked.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.version_compat import BROWSER_TEST_UI

pytestmark = pytest.mark.browser

if not BROWSER_TEST_UI:
    # A deliberate scope, not a missing tool: not turned into a failure in CI (see tests/version_compat.py).
    pytest.skip(
        "the browser test drives the newest Airflow UI; this release's connection form is checked from "
        "the hook metadata it serves the UI (tests/test_connection_form.py)",
        allow_module_level=True,
    )

REPO_ROOT = Path(__file__).resolve().parents[2]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HEALTH_TIMEOUT_S = 90
CONN_TYPE_LABEL = "Facebook Custom Audiences"
EXTRA_FIELDS = {
    "ad_account_id": ("Ad account ID", "text"),
    "app_id": ("App ID", "text"),
    "app_secret": ("App secret", "password"),
    "api_version": ("Graph API version", "text"),
}


def _skip_or_fail(message: str) -> None:
    """Skip where the browser cannot run; in CI the browser test must run, so fail there."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _chromium_path() -> str:
    """Debian's Chromium (Playwright drives it: no browser download)."""
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is None:
        _skip_or_fail("Chromium not found (make test installs Debian's chromium when run as root)")
    return str(found)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _airflow_env(home: Path) -> dict[str, str]:
    """Environment of an Airflow process with its own home and SQLite metadata, auth off."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
        AIRFLOW__API__WORKERS="1",
    )
    return env


def _wait_until_healthy(base_url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"airflow api-server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base_url}/api/v2/monitor/health", timeout=2) as answer:
                if json.load(answer)["metadatabase"]["status"] == "healthy":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"airflow api-server not healthy after {HEALTH_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser's path, checked before anything else starts."""
    return _chromium_path()


@pytest.fixture(scope="module")
def api_server(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``airflow api-server`` on loopback and a free port, with a freshly migrated SQLite database."""
    home = tmp_path_factory.mktemp("airflow-ui-home")
    env = _airflow_env(home)
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    port = _free_port()
    log = home / "api-server.log"
    with log.open("wb") as out:
        # A session of its own, so that stopping it also stops any worker it forked.
        server = subprocess.Popen(
            [airflow, "api-server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(base_url, server, log)
        yield base_url
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited on its own (a failed start)
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture
def page(chromium: str, api_server: str) -> Iterator[Any]:
    """A Chromium page (Playwright, driving Debian's browser: no browser download)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("Playwright is not installed (it comes with the project's test extras)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100}, base_url=api_server)
            page.set_default_timeout(20_000)
            yield page
        finally:
            browser.close()


def _screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    """Save a screenshot in the test's tmp dir and copy it to test-output/ (git-ignored) for people."""
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    kept = REPO_ROOT / "test-output"
    kept.mkdir(exist_ok=True)
    shutil.copy(shot, kept / name)
    return shot


def _open_add_connection_dialog(page: Any) -> Any:
    """Admin -> Connections -> Add Connection, then pick the Facebook Custom Audiences type."""
    page.goto("/")
    page.get_by_role("button", name="Admin").click()
    page.get_by_role("menuitem", name="Connections").click()
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("combobox").fill("Facebook")
    page.get_by_role("option", name=CONN_TYPE_LABEL).click()
    return dialog


def _field_labels(dialog: Any) -> list[str]:
    return [label.inner_text().strip() for label in dialog.locator("label").all() if label.is_visible()]


def test_connection_form_renders_relabelled_and_masked_fields(page: Any, tmp_path: Path) -> None:
    dialog = _open_add_connection_dialog(page)

    # Standard fields (open by default): host and password relabelled; login, port and schema hidden.
    host = dialog.locator("input[name='host']")
    token = dialog.locator("input[name='password']")
    host.wait_for(state="visible")
    assert {"Graph API base URL", "Access token"} <= set(_field_labels(dialog))
    assert host.get_attribute("placeholder") == "https://graph.facebook.com"
    assert token.evaluate("element => element.type") == "password"
    for hidden in ("login", "port", "schema"):
        assert dialog.locator(f"input[name='{hidden}']").count() == 0, f"{hidden} should be hidden"
    standard_shot = _screenshot(page, tmp_path, "connection-form-standard-fields.png")

    # Extra fields: the declarative conn-fields, each with its label; the app secret masked.
    dialog.get_by_text("Extra Fields", exact=True).click()
    for name, (label, input_type) in EXTRA_FIELDS.items():
        field = dialog.locator(f"input[name='element_{name}']")
        field.wait_for(state="visible")
        assert field.evaluate("element => element.type") == input_type, name
        assert label in _field_labels(dialog)
    extra_shot = _screenshot(page, tmp_path, "connection-form-extra-fields.png")

    assert standard_shot.stat().st_size > 10_000
    assert extra_shot.stat().st_size > 10_000


def test_connection_saved_from_the_form_stores_the_extra_fields(
    page: Any, api_server: str, tmp_path: Path
) -> None:
    dialog = _open_add_connection_dialog(page)
    dialog.locator("input[name='connection_id']").fill("fbca_from_ui")
    dialog.locator("input[name='host']").fill("http://127.0.0.1:9")
    dialog.locator("input[name='password']").fill("token-typed-in-the-ui")
    dialog.get_by_text("Extra Fields", exact=True).click()
    dialog.locator("input[name='element_ad_account_id']").fill("act_1234567890")
    dialog.locator("input[name='element_app_id']").fill("4242")
    dialog.locator("input[name='element_app_secret']").fill("secret-typed-in-the-ui")
    dialog.locator("input[name='element_api_version']").fill("v26.0")
    _screenshot(page, tmp_path, "connection-form-filled.png")
    dialog.get_by_role("button", name="Save").click()
    dialog.wait_for(state="hidden")

    with urllib.request.urlopen(f"{api_server}/api/v2/connections/fbca_from_ui", timeout=10) as answer:
        stored = json.load(answer)
    assert stored["conn_type"] == "facebook_custom_audiences"
    assert stored["host"] == "http://127.0.0.1:9"
    extra = json.loads(stored["extra"])
    assert extra["ad_account_id"] == "act_1234567890"
    assert extra["app_id"] == "4242"
    assert extra["api_version"] == "v26.0"
    # Airflow masks secrets in its API answers: "***" says a value was stored, without echoing it.
    assert extra["app_secret"] == "***"
    assert stored["password"] == "***"
