"""A person in Chromium connects Insightly with an API key: the demo app -> the broker's key
page -> a mistyped key refused -> the right one (the API URL pasted as Insightly shows it, in
another case) -> back connected; then "Call Insightly" with the same code as for OAuth. Also
on a phone's width with JavaScript off, as the page must work without it."""

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import ARTIFACTS

pytestmark = pytest.mark.e2e

GRACE = {"USER_ID": 7001, "FIRST_NAME": "Grace", "LAST_NAME": "Hopper", "EMAIL_ADDRESS": "grace@example.com"}
PHONE = {"width": 375, "height": 740}


@pytest.fixture
def account(standin):
    """A new Insightly account on pod eu1 with a live key, issued at the stand-in."""
    return standin("POST", "api-keys", {"pod": "eu1", "user": GRACE})


def open_key_page(page, local, *, popup: bool = True):
    """The key page: in a popup with JavaScript (connect.js), in the page itself without it."""
    page.goto(local.demo_url)
    expect(page.locator("#status")).to_contain_text("Not connected")
    if popup:
        with page.expect_popup() as opened:
            page.click("#connect-api-key")
        key_page = opened.value
    else:
        page.click("#connect-api-key")
        key_page = page
    expect(key_page.locator("#api_key")).to_be_visible()
    assert key_page.url.startswith(f"{local.gateway_url}/connect/api-key?session=")
    return key_page


def submit_key(page, api_key: str, api_url: str) -> None:
    page.fill("#api_key", api_key)
    page.fill("#api_url", api_url)
    page.click("button[type=submit]")


def test_connect_with_an_api_key_in_a_browser(local, backend, browser, account):
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context()
    page = context.new_page()
    try:
        key_page = open_key_page(page, local)
        expect(key_page.get_by_label("API key")).to_have_attribute("type", "password")
        key_page.screenshot(path=str(ARTIFACTS / "key-page.png"))

        # A mistyped key: Insightly is asked once, says no; the form is back and nothing is stored
        api_calls = local.provider.calls["api"]
        submit_key(key_page, "a-mistyped-key-0000", "eu1")
        expect(key_page.locator("#message")).to_contain_text("Insightly did not accept this API key")
        assert key_page.input_value("#api_key") == ""  # the key field is never refilled
        key_page.screenshot(path=str(ARTIFACTS / "key-refused.png"))
        assert local.provider.calls["api"] == api_calls + 1
        assert backend.connection("demo-user").status_code == 404

        # The right key, with the API URL pasted from User Settings -> API, in another case
        pasted = f"  {local.provider.api_url('eu1').upper()}/ "
        submit_key(key_page, account["api_key"], pasted)
        page.wait_for_url(f"{local.demo_url}/?status=connected*")  # the demo app completed the pending one
        expect(page.locator("#message")).to_contain_text("Insightly connected")
        expect(page.locator("#status")).to_have_text("Connected as Grace Hopper (grace@example.com)")
        expect(page.locator("#auth-mode")).to_have_text("API key (pod eu1)")
        expect(page.locator("#quota")).to_contain_text("of 1,000 requests left today")
        page.screenshot(path=str(ARTIFACTS / "key-connected.png"))
        status = backend.connection("demo-user").json()
        assert status["api_base_url"] == local.provider.api_url("eu1")  # rebuilt from the template

        # Call Insightly: through the broker's proxy, which sends Basic to the account's pod
        api_calls = local.provider.calls["api"]
        page.click("#call")
        expect(page.locator("#call-result")).to_have_text("Insightly says you are Grace Hopper (grace@example.com)")
        assert local.provider.calls["api"] == api_calls + 1
        assert account["api_key"] not in page.content()

        page.click("#disconnect")
        expect(page.locator("#status")).to_contain_text("Not connected")
    finally:
        context.close()


def test_the_key_page_works_on_a_phone_without_javascript(local, backend, browser, account):
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(java_script_enabled=False, viewport=PHONE)
    page = context.new_page()
    try:
        open_key_page(page, local, popup=False)
        for field in ("#api_key", "#api_url", "button[type=submit]"):
            box = page.locator(field).bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], field  # no sideways scrolling
        page.screenshot(path=str(ARTIFACTS / "key-page-phone.png"), full_page=True)

        submit_key(page, account["api_key"], "EU1")  # just the pod will do

        page.wait_for_url(f"{local.demo_url}/?status=connected*")
        expect(page.locator("#status")).to_have_text("Connected as Grace Hopper (grace@example.com)")
        assert backend.connection("demo-user").json()["auth_mode"] == "api_key"
        page.click("#disconnect")
        expect(page.locator("#status")).to_contain_text("Not connected")
    finally:
        context.close()
