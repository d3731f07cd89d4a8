from __future__ import annotations

import importlib.util
import os
import signal
from typing import TYPE_CHECKING

import pytest

from ._serve_process import serve

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = os.environ.get("AGENTWATCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None, reason="the playwright package is not installed (dev extra)"
    ),
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install -y chromium; .ci/run does)",
    ),
]


def state_of(page: Page, node: str) -> str:
    """The state badge of one node of the supervision tree."""
    return page.locator(f'#tree li[data-id="{node}"] > .state').first.inner_text()


class TestDashboardInChromium:
    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    def test_dashboard_shows_live_runs_and_the_monitor_detached_after_repeated_crashes(self, backend: str) -> None:
        from playwright.sync_api import sync_playwright

        with serve("--backend", backend, "--simulate", "4") as server, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(server.url, timeout=15_000)
                page.wait_for_selector("#conn.live", timeout=10_000)
                page.wait_for_selector('#monitoring[data-state="running"]', timeout=10_000)
                # Live runs from the simulated agents, and the bridge's throughput.
                page.wait_for_selector("#runs tbody tr.run", timeout=15_000)
                runs_before = page.locator("#runs tbody tr.run").count()
                assert state_of(page, "bridge") == "running"
                assert state_of(page, "monitor") == "running"

                page.click('button[data-fault="crash-repeatedly"]')
                page.wait_for_selector('#monitoring[data-state="detached"]', timeout=30_000)
                assert state_of(page, "monitoring") == "detached"
                # The bridge runs alone, and the runs go on.
                assert state_of(page, "bridge") == "running"
                page.wait_for_selector("#runs tbody tr.run", timeout=10_000)
                assert page.locator("#status").inner_text() == "degraded"
                assert page.locator("#supervision li", has_text="detached").count() >= 1
            finally:
                browser.close()
            code, _, _ = server.stop(signal.SIGTERM)
        assert runs_before >= 1
        assert code == 0
