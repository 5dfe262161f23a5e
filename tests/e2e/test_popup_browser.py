"""A person in Chromium connects from the demo app in a popup (display=popup, connect.js): the
app's page stays put, the broker's last page posts the outcome to it and closes; a closed
popup and a message from a wrong origin do not fool the app."""

import time

import pytest
from playwright.sync_api import expect

from local.demo_app import DECLINED, FLASH

pytestmark = pytest.mark.e2e


def open_popup(page, local, button="#connect"):
    page.goto(local.demo_url)
    expect(page.locator("#status")).to_contain_text("Not connected")
    with page.expect_popup() as opened:
        page.click(button)
    popup = opened.value
    popup.wait_for_load_state()
    return popup


def wait_closed(popup, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not popup.is_closed() and time.monotonic() < deadline:
        time.sleep(0.05)
    return popup.is_closed()


def test_popup_success_completes_in_the_app_and_closes(local, backend, page):
    popup = open_popup(page, local)
    expect(popup.locator("#approve")).to_be_visible()

    popup.click("#approve")

    page.wait_for_url(f"{local.demo_url}/?status=connected*")  # completed by the app's backend
    expect(page.locator("#message")).to_have_text(FLASH["connected"])
    expect(page.locator("#status")).to_contain_text("Ada Lovelace")
    assert wait_closed(popup)
    assert backend.connection("demo-user").json()["status"] == "active"
    backend.delete("demo-user")


def test_popup_denied_shows_the_same_error_as_the_redirect(local, backend, page):
    popup = open_popup(page, local)

    popup.click("#deny")

    expect(page.locator("#message")).to_have_text(DECLINED)
    assert wait_closed(popup)
    assert backend.connection("demo-user").status_code == 404


def test_popup_closed_by_the_user_resolves_unknown_and_the_app_asks_the_broker(local, backend, page):
    popup = open_popup(page, local)
    expect(popup.locator("#approve")).to_be_visible()

    popup.close()

    page.wait_for_url(f"{local.demo_url}/?status=unknown")
    expect(page.locator("#message")).to_have_text(FLASH["unknown"])
    expect(page.locator("#status")).to_contain_text("Not connected")  # from GET /connections/{id}


def test_a_message_from_a_wrong_origin_is_ignored(local, backend, page):
    popup = open_popup(page, local)
    expect(popup.locator("#approve")).to_be_visible()  # the popup is on the provider's origin now
    forged = "{type: 'insightly-connect', status: 'connected', connection_id: 'demo-user'}"

    popup.evaluate(f"window.opener.postMessage({forged}, '*')")  # from the popup, but not the broker
    page.evaluate(f"window.postMessage({forged}, '*')")  # from the app's own origin
    page.wait_for_timeout(1000)

    assert page.url == f"{local.demo_url}/"  # nothing was taken for an outcome
    popup.click("#deny")
    expect(page.locator("#message")).to_have_text(DECLINED)  # only the broker's own message counts
