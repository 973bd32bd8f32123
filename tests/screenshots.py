"""Retake the README's screenshots from the demo: ``make screenshots`` (after ``make setup``).

Starts the dashboard on the database `make run` uses (the embedded demo, or DATABASE_URL),
with a throwaway login file and live demo traffic as `make run` has, and photographs each page in Debian's chromium into
docs/screenshots/ once its charts have drawn.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
from pathlib import Path

from cachelib import db
from tests.browser import ROOT, chromium, log_in, open_page, streamlit_server

SCREENSHOTS = ROOT / "docs" / "screenshots"
# sidebar link, page title, file, height of the shot (px): the part of the page an admin looks at first
PAGES = [
    ("Overview", "Cache Overview", "overview.png", 1500),
    ("Performance Analysis", "Performance Analysis", "performance.png", 2300),
    ("Cache Management", "Cache Management", "management.png", 2450),
    ("Maintenance & Health", "Maintenance & Health", "maintenance.png", 2200),
    ("Monthly Review", "Monthly Review", "monthly_review.png", 2300),
]
CHARTED = {"performance.png", "maintenance.png", "monthly_review.png"}


def take(url: str) -> list[Path]:
    password = secrets.token_urlsafe(12)
    taken = []
    with tempfile.TemporaryDirectory() as work, \
            streamlit_server(url, Path(work), password, refresh_seconds=600,
                             extra_env={"CACHE_DEMO_TRAFFIC": "on"}) as server, chromium() as browser:
        context = browser.new_context(viewport={"width": 1400, "height": 900}, device_scale_factor=1)
        page = context.new_page()
        page.goto(server["url"], wait_until="domcontentloaded")
        log_in(page, password)
        for link, title, name, height in PAGES:
            page.set_viewport_size({"width": 1400, "height": height})
            open_page(page, link, title)
            if name in CHARTED:
                page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
                page.wait_for_timeout(1500)
            path = SCREENSHOTS / name
            page.screenshot(path=str(path))
            taken.append(path)
        context.close()
    return taken


if __name__ == "__main__":
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for shot in take(db.database_url()):
        print(f"wrote {shot.relative_to(ROOT)}")
    sys.exit(0)
