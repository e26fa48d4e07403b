"""Session fixtures shared by the end-to-end and browser tests: the real stack on loopback (tests/support/stack.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from stack import Stack, run_stack, suite_cache_on

_BROWSER_TESTS = Path(__file__).resolve().parent / "browser"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the browser tests last: Playwright's sync API keeps an event loop running in the main thread for the
    rest of the session, and async (anyio) tests cannot run after it has started."""
    items.sort(key=lambda item: item.path.is_relative_to(_BROWSER_TESTS))


MODES = ("spoe", "auth_request")


@pytest.fixture(scope="session", params=MODES)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack with 300 s tokens, once per mode: every test using it runs in SPOE and in auth_request mode."""
    cache = suite_cache_on()  # IDGATE_TEST_CACHE=off: the whole suite without the decision cache
    with run_stack(tmp_path_factory.mktemp(f"stack-{request.param}"), mode=request.param, cache=cache) as running:
        yield running


@pytest.fixture(scope="session", params=MODES)
def short_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose IdP issues 4 s tokens and whose idgate refreshes 2 s before expiry, once per mode."""
    with run_stack(
        tmp_path_factory.mktemp(f"short-{request.param}"), mode=request.param, token_ttl=4, refresh_before=2
    ) as running:
        yield running


@pytest.fixture
def fresh(stack: Stack) -> Stack:
    """The stack with the upstreams' request records cleared."""
    stack.reset_upstreams()
    return stack


@pytest.fixture(scope="session", params=MODES)
def multi_idp_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack with a second login IdP (``stack.second_idp``, issuers[] name ``second``), once per mode."""
    with run_stack(tmp_path_factory.mktemp(f"multi-idp-{request.param}"), mode=request.param, second_idp=True) as s:
        yield s


@pytest.fixture(scope="session", params=MODES)
def tls_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack with TLS between HAProxy and idgate (SPOP and HTTP; mutual where HAProxy can present a client
    certificate) and idgate's /metrics on a bind of its own, once per mode."""
    with run_stack(tmp_path_factory.mktemp(f"tls-{request.param}"), mode=request.param, tls=True) as running:
        yield running
