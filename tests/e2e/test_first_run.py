"""The first run, as a newcomer makes it: `make local` from the README in a clean shell, the
demo app in Chromium, both connect kinds, a scheduled run, Ctrl-C.

Nothing of the test process reaches the stack: it is a subprocess of `make local` with PATH,
HOME, LANG and the documented port variables only (no POWERTOOLS_*, no AWS_*, no conftest),
so a function that depends on a variable only the tests set, or on an import order only the
tests get right, fails here as it fails for a user."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import ARTIFACTS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
STARTED = "Ctrl-C to stop."
ACCESS_LINE = re.compile(r"^\d\d:\d\d:\d\d (?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d{3}) (?P<function>\S+) ")
SCHEDULED_RUN = re.compile(r"^\d\d:\d\d:\d\d schedule SchedulerFunction ")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class MakeLocal:
    """`make local` in its own process group, as a terminal runs it; every line it prints kept."""

    def __init__(self, env: dict[str, str]):
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(["make", "local"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern | str, timeout: float, after: int = 0) -> str:
        """The first line from index `after` on that matches; fails with the output so far."""
        found = re.compile(re.escape(pattern)) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    if found.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise AssertionError(f"no line matching {found.pattern!r} in {timeout} s:\n" + self.output)
                self._changed.wait(min(left, 0.5))

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def interrupt(self) -> float:
        """Ctrl-C: SIGINT to the whole process group; the seconds until every process ended."""
        started = time.monotonic()
        os.killpg(self.process.pid, signal.SIGINT)
        self.process.wait(timeout=30)
        return time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def make_local():
    moto, standin, gateway, demo = free_ports(4)
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
           "MOTO_PORT": str(moto), "STANDIN_PORT": str(standin), "GATEWAY_PORT": str(gateway),
           "DEMO_PORT": str(demo)}
    stack = MakeLocal(env)
    stack.demo_url = f"http://127.0.0.1:{demo}"
    try:
        yield stack
    finally:
        stack.kill()


def connect_in_popup(page, button: str):
    with page.expect_popup() as opened:
        page.click(button)
    return opened.value


def call_insightly(page, expected: str) -> None:
    page.click("#call")
    expect(page.locator("#call-result")).to_contain_text(expected)


def test_make_local_works_for_a_newcomer_in_a_browser(make_local, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    make_local.wait_for(STARTED, timeout=120)
    banner = make_local.output
    function_log = ROOT / re.search(r"Function logs\s+(\S+)", banner).group(1)

    context = browser.new_context()
    console_errors = []  # what a newcomer would see in the browser's console, on every page and popup
    context.on("console", lambda message: console_errors.append(f"{message.location.get('url')}: {message.text}")
               if message.type == "error" else None)
    page = context.new_page()
    try:
        page.goto(make_local.demo_url)
        expect(page.locator("#status")).to_contain_text("Not connected")

        # OAuth: approve at the stand-in's consent page, then Call Insightly, Contacts, Disconnect.
        consent = connect_in_popup(page, "#connect")
        consent.click("#approve")
        expect(page.locator("#status")).to_contain_text("Connected as Ada Lovelace")
        call_insightly(page, "ada@example.com")
        page.click("#contacts-button")
        expect(page.locator("#contacts-list li")).to_have_count(3)
        expect(page.locator("#contacts-list")).to_contain_text("Grace Hopper")
        page.click("#disconnect")
        expect(page.locator("#status")).to_contain_text("Not connected")

        # API key: a test key from the demo app, pasted into the broker's key page as suggested.
        page.click("#issue-test-key")
        api_key = page.locator("#test-key-value").inner_text()
        api_url = page.locator("#test-api-url").inner_text()
        key_page = connect_in_popup(page, "#connect-api-key")
        placeholder = key_page.get_attribute("#api_url", "placeholder")
        assert placeholder and api_url.split("://", 1)[1].rstrip("/") in placeholder  # it suggests what works
        key_page.fill("#api_key", api_key)
        key_page.fill("#api_url", api_url)
        key_page.click("button[type=submit]")
        expect(page.locator("#status")).to_contain_text("Connected as Key User")
        expect(page.locator("#auth-mode")).to_contain_text("API key (pod na1)")
        call_insightly(page, "Key User")

        # A scheduled run passes (every 30 s locally), then the connection still works.
        make_local.wait_for(SCHEDULED_RUN, timeout=75, after=len(make_local.lines))
        page.reload()
        call_insightly(page, "Key User")
        page.screenshot(path=str(ARTIFACTS / "first-run.png"))
    finally:
        context.close()
    assert console_errors == []

    seconds = make_local.interrupt()
    output = make_local.output
    assert seconds < 10, f"Ctrl-C took {seconds:.1f} s"
    assert "Stopped." in output
    assert "make: ***" not in output, "the stack did not exit 0 on Ctrl-C:\n" + output
    statuses = [m.group("status") for line in output.splitlines() if (m := ACCESS_LINE.match(line))]
    assert len(statuses) >= 10 and not [s for s in statuses if s.startswith("5")], output
    for bad in ("Traceback", "service_undefined", " failed"):
        assert bad not in output, f"{bad!r} in the console:\n{output}"
    logged = function_log.read_text()
    assert '"Namespace":"InsightlyConnect"' in logged  # the functions' metrics were written
    assert "service_undefined" not in logged and "Traceback" not in logged
