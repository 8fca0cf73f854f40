"""A real headless Chromium (Debian's ``chromium``, driven by Playwright) against a real uvicorn gateway.

The gateway runs in this process under uvicorn on a held loopback port (``tests.support.threaded_gateway``),
with the fake engine (``tests.support.fake_engine``: the fused map follows the stroke window, so which slice
peaks and where the mask lies are known) and a SQLite job store in the test's folder. Playwright is pointed
at the Debian binary (``executable_path``); nothing is downloaded. Every request the browser makes to
another host is refused and counted, so a page that needed the internet fails its test.

Where Chromium or Playwright is missing these tests skip and say why; ``make test`` installs both
(``make chromium-env`` and the ``dev`` extra).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from api.app import create_app
from api.settings import Settings
from ich_devtools.processes import reserved_port
from tests.support.fake_engine import FakeEngine
from tests.support.threaded_gateway import serve_in_thread

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Screenshots land here (ignored by git); ``ICH_E2E_ARTIFACTS`` chooses another folder.
ARTIFACTS = Path(os.environ.get("ICH_E2E_ARTIFACTS", REPO_ROOT / "test-artifacts" / "e2e"))
VIEWPORT = {"width": 1280, "height": 900}
OUTPUT_ROUTE = re.compile(r"/v1/studies/[0-9a-f-]{36}/(seg|sr|key-images)$")


def chromium_path() -> str | None:
    """Debian's Chromium, or ``ICH_CHROMIUM`` where it lives elsewhere."""
    configured = os.environ.get("ICH_CHROMIUM")
    if configured:
        return configured
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The gateway under uvicorn on loopback until the session ends; its base URL."""
    folder = tmp_path_factory.mktemp("e2e-gateway")
    settings = Settings(
        data_dir=folder / "data",
        model_repository=folder / "paper-rule-repository",  # no case model: the fake maps' paper rule
        threads=2,
    )
    app = create_app(settings, engine=FakeEngine(input_size=32))
    with serve_in_thread(app, reserved_port()) as base:
        yield base


@dataclass
class Offline:
    """Requests the browser tried to send anywhere but the gateway (refused)."""

    base: str
    refused: list[str] = field(default_factory=list)
    #: Script errors and console errors of the page (a blocked asset or a broken script shows here).
    errors: list[str] = field(default_factory=list)

    def watch(self, page: Any) -> None:
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        # The page asks for a job's DICOM outputs (SEG, SR, key images) where the gateway has the routes;
        # a job without one answers 404, which Chromium logs. That is the page working, not failing.
        url = str(message.location.get("url", ""))
        if message.type == "error" and not OUTPUT_ROUTE.search(url):
            self.errors.append(message.text)

    def handle(self, route: Any) -> None:
        url = route.request.url
        if url.startswith(self.base) or url.startswith(("blob:", "data:")):
            route.continue_()
        else:
            self.refused.append(url)
            route.abort()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium through Playwright's sync API, for one test module at a time.

    While it runs, Playwright keeps an asyncio loop running in this thread, so every later test that calls
    ``asyncio.run`` would fail: the browser must be gone before the modules after this one start.
    """
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no chromium binary (apt-get install chromium, or make chromium-env)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--disable-gpu", "--force-color-profile=srgb", "--disable-dev-shm-usage"],
        )
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def open_offline_page(browser: Any, gateway: str, timeout_ms: int = 20_000) -> Iterator[tuple[Any, Offline]]:
    """A fresh page at 1280 x 900 whose requests may reach the gateway only; closed after the block."""
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    offline = Offline(gateway)
    context.route("**/*", offline.handle)
    page = context.new_page()
    offline.watch(page)
    page.set_default_timeout(timeout_ms)
    try:
        yield page, offline
    finally:
        context.close()


@pytest.fixture
def offline_page(browser: Any, gateway: str) -> Iterator[tuple[Any, Offline]]:
    """A fresh page for one test (``open_offline_page``)."""
    with open_offline_page(browser, gateway) as opened:
        yield opened
