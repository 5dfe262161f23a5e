"""A person in Chromium: connect Insightly from the demo app, call it, decline, disconnect."""

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import ARTIFACTS

pytestmark = pytest.mark.e2e


def test_connect_call_decline_and_disconnect_in_a_browser(local, backend, page):
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(local.demo_url)
    expect(page.locator("#status")).to_contain_text("Not connected")

    # Connect in a popup: the demo app -> the broker -> the stand-in's consent page -> approve
    with page.expect_popup() as opened:
        page.click("#connect")
    popup = opened.value
    expect(popup.locator("#approve")).to_be_visible()
    popup.screenshot(path=str(ARTIFACTS / "consent.png"))
    popup.click("#approve")
    page.wait_for_url(f"{local.demo_url}/?status=connected*")
    expect(page.locator("#message")).to_contain_text("Insightly connected")
    expect(page.locator("#status")).to_contain_text("Ada Lovelace")
    page.screenshot(path=str(ARTIFACTS / "connected.png"))

    # Call Insightly: the demo backend gets a token from the broker and calls Users/Me
    bearer_calls = local.provider.calls["users_me"]
    page.click("#call")
    expect(page.locator("#call-result")).to_contain_text("ada@example.com")
    assert local.provider.calls["users_me"] == bearer_calls + 1  # the stand-in saw the Bearer call
    version = backend.connection("demo-user").json()["connected_at"]

    # Decline on a second run: a friendly message, and nothing new stored
    with page.expect_popup() as opened:
        page.click("#connect")
    opened.value.click("#deny")
    page.wait_for_url(f"{local.demo_url}/?status=error*")
    expect(page.locator("#message")).to_contain_text("You declined access to Insightly")
    page.screenshot(path=str(ARTIFACTS / "declined.png"))
    assert backend.connection("demo-user").json()["connected_at"] == version

    # Disconnect: revoked at the stand-in, gone from the broker
    revoked_before = len(local.provider.revoked)
    page.click("#disconnect")
    expect(page.locator("#message")).to_contain_text("disconnected")
    expect(page.locator("#status")).to_contain_text("Not connected")
    assert len(local.provider.revoked) == revoked_before + 1
    assert backend.connection("demo-user").status_code == 404
    page.screenshot(path=str(ARTIFACTS / "disconnected.png"))


def test_declining_the_first_time_stores_nothing(local, backend, page):
    page.goto(local.demo_url)
    with page.expect_popup() as opened:
        page.click("#connect")
    opened.value.click("#deny")

    expect(page.locator("#message")).to_contain_text("You declined access to Insightly. Nothing was connected.")
    expect(page.locator("#status")).to_contain_text("Not connected")
    assert backend.connection("demo-user").status_code == 404
