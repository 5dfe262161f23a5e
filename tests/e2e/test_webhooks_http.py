"""Webhooks in the local stack: a lifecycle event -> the stack's rule and queue -> the delivery
function -> the demo app's POST /webhooks, verified there with the standardwebhooks library
and listed on its page. Plain HTTP (the browser adds nothing to this path)."""

import json
import time

import pytest
import requests

from tests.e2e.test_http import connect

pytestmark = pytest.mark.e2e


def received(local, wanted, seconds: float = 20.0) -> list[dict]:
    """The demo app's webhook list once one matches `wanted` (or the list as it is at the end)."""
    deadline = time.monotonic() + seconds
    while True:
        hooks = requests.get(f"{local.demo_url}/webhooks.json", timeout=5).json()
        if any(wanted(h) for h in hooks) or time.monotonic() > deadline:
            return hooks
        time.sleep(0.3)


def test_a_connection_made_through_the_demo_app_shows_a_verified_connected_webhook(local, backend):
    assert local.webhook_url == f"{local.demo_url}/webhooks"
    connect(local, backend, "hook-user")

    hooks = received(local, lambda h: h["connection_id"] == "hook-user" and h["type"] == "Connected")
    assert {"type": "Connected", "connection_id": "hook-user", "verified": True}.items() <= next(
        h for h in hooks if h["connection_id"] == "hook-user").items(), hooks
    page = requests.get(local.demo_url + "/", timeout=10).text
    row = page[page.index('<tbody id="webhooks-list">'):page.index("</tbody>")]
    assert "<td>Connected</td><td>hook-user</td><td>yes</td>" in row


def test_a_delivery_with_a_wrong_signature_is_listed_as_not_verified_and_refused(local):
    body = json.dumps({"type": "Deleted", "connection_id": "forged-user", "id": "msg_forged"})
    answer = requests.post(f"{local.demo_url}/webhooks", data=body, timeout=5, headers={
        "content-type": "application/json", "webhook-id": "msg_forged",
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": "v1,bm90IHRoZSBzaWduYXR1cmUgb2YgdGhpcyBib2R5IGF0IGFsbCE="})

    assert answer.status_code == 400 and answer.json()["error"] == "invalid_signature"
    forged = [h for h in received(local, lambda h: h["connection_id"] == "forged-user")
              if h["connection_id"] == "forged-user"]
    assert [(h["type"], h["verified"]) for h in forged] == [("Deleted", False)]
    page = requests.get(local.demo_url + "/", timeout=10).text
    assert "<td>Deleted</td><td>forged-user</td><td>no</td>" in page
