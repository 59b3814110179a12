"""A real Chromium for the console's tests: Debian's, driven by Playwright, with the network cut off.

Every request the browser makes to anything but the daemon under test is refused and recorded,
so a page that tries to load a font, a script or a remote image shows up in `elsewhere`.

`pytest --screenshots DIR` also saves the pages the tests name with `shoot()` (the README's
pictures are made so: `pytest -n 0 tests/test_console*.py --screenshots docs/console`).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Browser, BrowserContext, Page, Route, ViewportSize, sync_playwright

# The flags Chromium needs as root in a container, and without the background traffic a closed
# network refuses (updates, sync, metrics).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]


def chromium() -> Iterator[Browser]:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "no Chromium on PATH: run `bash tests/install-tools.sh` (Debian package chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=FLAGS)
        yield browser
        browser.close()


SCREENSHOTS: list[Path] = []  # where `--screenshots` asks them saved (set by conftest), or none
PHONE = ViewportSize(width=390, height=844)
LAPTOP = ViewportSize(width=1280, height=800)


class Offline:
    """A browser context that reaches `base` and nothing else; `phone` gives it a phone's screen."""

    def __init__(self, browser: Browser, base: str, *, phone: bool = False) -> None:
        self.base = base.rstrip("/")
        self.elsewhere: list[str] = []
        size = PHONE if phone else LAPTOP
        self.context: BrowserContext = browser.new_context(base_url=self.base, viewport=size)
        self.context.route("**/*", self._only_base)
        self.context.set_default_timeout(10_000)
        self.page: Page = self.context.new_page()
        self.dialogs: list[str] = []
        self.page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))

    def _only_base(self, route: Route) -> None:
        url = route.request.url
        if url == self.base or url.startswith(self.base + "/"):
            route.continue_()
        else:
            self.elsewhere.append(url)
            route.abort("internetdisconnected")

    def sign_in(self, token: str, at: str = "/ui/") -> None:
        self.page.goto(at)
        self.page.fill("input[name=token]", token)
        self.page.click("button[type=submit]")

    def shoot(self, name: str) -> None:
        """Save the whole page as `name`.png when the run was asked for screenshots."""
        for directory in SCREENSHOTS:
            self.page.wait_for_load_state("load")  # frames included
            directory.mkdir(parents=True, exist_ok=True)
            # A screen as tall as the page: Chromium does not paint frames below the fold into a
            # full-page screenshot.
            screen = self.page.viewport_size or LAPTOP
            height = self.page.evaluate("document.documentElement.scrollHeight")
            self.page.set_viewport_size(ViewportSize(width=screen["width"], height=height))
            self.page.screenshot(path=str(directory / f"{name}.png"))
            self.page.set_viewport_size(screen)

    def close(self) -> None:
        self.context.close()
