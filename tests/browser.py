"""Headless Chromium for page tests: Debian's chromium driven by Playwright (no browser download).

Tests that need it use the ``browser`` fixture from conftest. Without /usr/bin/chromium (or
$OPENRLAIF_CHROMIUM) they are skipped, except where OPENRLAIF_REQUIRE_BROWSER=1 (CI sets it, after
installing chromium), where a missing browser fails them instead."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import pytest

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    return os.environ.get("OPENRLAIF_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def need_browser() -> str:
    path = chromium_path()
    try:
        import playwright  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        if os.environ.get("OPENRLAIF_REQUIRE_BROWSER") == "1":
            pytest.fail("OPENRLAIF_REQUIRE_BROWSER=1 but chromium or playwright is missing "
                        "(apt-get install chromium; pip install playwright)")
        pytest.skip("needs Debian chromium and the playwright package")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """An ASGI app served by uvicorn on 127.0.0.1 in a background thread (real HTTP)."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
