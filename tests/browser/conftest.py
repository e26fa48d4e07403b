"""Real-browser fixtures: Debian's Chromium (``/usr/bin/chromium``, from ``scripts/setup``) driven by pytest-playwright.

Never ``playwright install``: this machine cannot download Playwright's own browser builds. ``IDGATE_CHROMIUM``
points at another Chromium binary. A missing binary FAILS the tests (CI installs it), it does not skip them.
Every test in this directory gets the ``browser`` marker (``-m "not browser"`` deselects them).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser

CHROMIUM_ENV = "IDGATE_CHROMIUM"
DEFAULT_CHROMIUM = "/usr/bin/chromium"

# Without the background-networking flags Chromium keeps calling Google services, which this closed network drops.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

_HERE = Path(__file__).resolve().parent


def chromium_path() -> str:
    """The Chromium executable to drive: ``$IDGATE_CHROMIUM`` or ``/usr/bin/chromium``."""
    return os.environ.get(CHROMIUM_ENV) or DEFAULT_CHROMIUM


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Called with every collected item of the session, not only this directory's: filter by path.
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    executable = chromium_path()
    if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
        pytest.fail(
            f"Chromium not found at {executable} (set {CHROMIUM_ENV} to another binary). "
            "Run ./scripts/setup, which installs Debian's chromium package; do not use `playwright install`.",
            pytrace=False,
        )
    return {
        **browser_type_launch_args,
        "executable_path": executable,
        "args": list(CHROMIUM_ARGS),
        "headless": True,  # no display on these machines; --headed is not supported here
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    # The test servers use a throw-away CA that Chromium does not trust.
    return {**browser_context_args, "ignore_https_errors": True}


@pytest.fixture(scope="session")
def browser(launch_browser: Callable[[], Browser]) -> Iterator[Browser]:
    """pytest-playwright's ``browser``, timed: the launch time is printed (visible with ``-s``)."""
    started = time.perf_counter()
    browser = launch_browser()
    print(f"\n[browser] Chromium {browser.version} launched in {time.perf_counter() - started:.2f} s")
    yield browser
    browser.close()
