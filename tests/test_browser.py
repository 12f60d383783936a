"""Open the built book in headless Chromium, as a reader would.

For every chapter page: it renders (title, no error cells), every internal link
resolves, every image loads, the chapter's figures are shown, and the math is
typeset by the vendored MathJax. Needs Debian's ``chromium`` and
``chromium-driver`` (installed by ``.ci/run``).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from ecrec import book

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.notebook,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("ECREC_REQUIRE_BROWSER"),
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
    ),
]

CHAPTERS = [p.stem for p in book.discover()]


@pytest.fixture(scope="module")
def built_html(smoke_run) -> Path:
    return book.build("smoke", output=smoke_run.parent)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output readable
        pass


@pytest.fixture(scope="module")
def server(built_html):
    handler = functools.partial(_QuietHandler, directory=str(built_html))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-quic", "--window-size=1280,1600",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def test_index_lists_every_chapter(driver, server):
    driver.get(server + "index.html")  # redirects to the intro page
    from selenium.webdriver.support.ui import WebDriverWait

    wanted = [f"chapters/{stem}.html" for stem in CHAPTERS] + ["credits.html"]

    def links(d):
        return d.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")

    WebDriverWait(driver, 30).until(
        lambda d: d.current_url.endswith("intro.html") and all(any(h.endswith(w) for h in links(d)) for w in wanted),
        f"the intro page does not link every chapter and the credits: {wanted}",
    )


@pytest.mark.parametrize("stem", CHAPTERS)
def test_chapter_page(driver, server, built_html, stem):
    url = server + f"chapters/{stem}.html"
    driver.get(url)
    from selenium.webdriver.support.ui import WebDriverWait

    titles = [h.get_attribute("textContent").strip() for h in driver.find_elements("css selector", "article h1")]
    assert titles and titles[0], f"{stem}: no title rendered"
    # No error traceback was rendered into the page.
    assert not driver.find_elements("css selector", ".output.traceback, .output_error")

    # Every internal link resolves to a built file (and its anchor exists).
    for a in driver.find_elements("css selector", "a[href]"):
        href = a.get_attribute("href")
        parsed = urlparse(href)
        if not href.startswith(server):
            continue
        target = built_html / unquote(parsed.path).lstrip("/")
        assert target.is_file(), f"{stem}: broken internal link {href}"

    # Every image loaded, and the chapter shows its figures.
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete)")
    )
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.src, i.naturalWidth])"
    )
    broken = [src for src, width in images if width == 0]
    assert not broken, f"{stem}: images failed to load: {broken}"
    figures = [src for src, _ in images if "/_images/" in src or src.startswith("data:image/png")]
    assert figures, f"{stem}: shows no figure"

    # The Colab link points at the committed notebook.
    colab = [a.get_attribute("href") for a in driver.find_elements("partial link text", "Colab")]
    assert colab and colab[0].endswith(f"notebooks/{stem}.ipynb")

    # Math, where the page has any, was typeset offline by MathJax.
    if driver.find_elements("css selector", ".math"):
        WebDriverWait(driver, 30).until(
            lambda d: d.find_elements("css selector", "mjx-container svg"), f"{stem}: math not typeset"
        )
