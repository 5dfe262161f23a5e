"""The built docs site, as a reader's browser gets it: it loads nothing from another origin
(no fonts, scripts or styles from a CDN: the site works offline and tells no third party who
reads it), and no code block hides part of its lines at a 1280 px wide window.

The site is built here with mkdocs --strict, as `make docs` builds it, into a temporary
directory, then served on loopback and opened in Debian's Chromium (the `browser` fixture of
tests/e2e/conftest.py)."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from local.stack import ROOT

pytestmark = pytest.mark.e2e

ABSOLUTE = re.compile(r"^\s*(?:https?:)?//", re.IGNORECASE)
CSS_URL = re.compile(r"""url\(\s*['"]?([^'")\s]+)|@import\s+(?:url\(\s*)?['"]?([^'")\s;]+)""", re.IGNORECASE)
# Attributes that make a browser fetch what they name (an <a href> is only a link).
FETCHING = {"src", "href", "srcset", "poster", "data", "action", "formaction", "background"}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                   env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, check=True, capture_output=True)
    return out


class _Loads(HTMLParser):
    """Every URL an HTML page makes the browser fetch by itself, and its inline styles."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self._in_style = tag == "style"
        for name, value in attrs:
            if value is None or (tag == "a" and name == "href"):
                continue
            if name in FETCHING:
                self.urls += [part.split()[0] for part in value.split(",") if part.strip()] if name == "srcset" \
                    else [value]
            elif name == "style":
                self.styles.append(value)

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


def css_urls(css: str) -> list[str]:
    return [first or second for first, second in CSS_URL.findall(css)]


def test_the_site_names_nothing_to_load_from_another_origin(site):
    # Given every HTML page and stylesheet of the built site
    foreign = []
    for path in sorted(site.rglob("*")):
        if path.suffix == ".html":
            loads = _Loads()
            loads.feed(path.read_text(encoding="utf-8"))
            urls = loads.urls + [url for style in loads.styles for url in css_urls(style)]
        elif path.suffix == ".css":
            urls = css_urls(path.read_text(encoding="utf-8"))
        else:
            continue
        # Then none of what they load (not links to read) is absolute
        foreign += [f"{path.relative_to(site)}: {url}" for url in urls if ABSOLUTE.match(url)]
    assert foreign == []


@pytest.fixture(scope="module")
def served(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def site_pages(site: Path) -> list[str]:
    return sorted(path.relative_to(site).as_posix() for path in site.rglob("index.html"))


# For each code block wider than its box: the page, its first line and how much is hidden.
OVERFLOWING_CODE = """() => [...document.querySelectorAll("pre > code, pre")]
  .filter(el => el.scrollWidth > el.clientWidth + 1)
  .map(el => `${el.innerText.split("\\n")[0].slice(0, 60)} (${el.scrollWidth} > ${el.clientWidth} px)`)"""


@dataclass
class Visit:
    """What the browser did and saw on every page of the site at 1280x800."""
    elsewhere: list[str] = field(default_factory=list)  # requests to another origin
    overflowing: dict[str, list[str]] = field(default_factory=dict)  # page -> code blocks cut off


@pytest.fixture(scope="module")
def visit(site, served, browser) -> Visit:
    seen = Visit()
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    # Requests elsewhere are recorded, then refused (tests have no network but loopback).
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(served)
                  or not route.request.url.startswith("http") else route.abort())
    page = context.new_page()
    page.on("request", lambda request: seen.elsewhere.append(request.url)
            if request.url.startswith("http") and not request.url.startswith(served) else None)
    pages = site_pages(site)
    assert len(pages) > 10
    for path in pages:
        page.goto(f"{served}/{path.removesuffix('index.html')}", wait_until="networkidle")
        hidden = page.evaluate(OVERFLOWING_CODE)
        if page.evaluate("document.documentElement.scrollWidth > window.innerWidth"):
            hidden.append("the page itself is wider than the window")
        if hidden:
            seen.overflowing[path] = hidden
    context.close()
    return seen


def test_no_page_fetches_anything_from_another_origin(visit):
    # Given every page opened in Chromium, scripts run and fonts applied: nothing left loopback
    assert visit.elsewhere == []


def test_every_code_block_shows_its_whole_lines_at_1280px(visit):
    # Given every page at 1280x800: no code block needs a horizontal scroll (long lines wrap),
    # and no page is wider than the window
    assert visit.overflowing == {}
