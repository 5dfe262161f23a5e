"""start_local_stack(): the whole `make local` stack in-process on free ports, and stopped cleanly."""

import html
import json
import logging
import os
import re
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests

from insightly_connect import Broker
from local import start_local_stack
from tests.support.signed import keyed_session


def test_the_whole_stack_starts_connects_and_stops_cleanly(tmp_path):
    before_env, before_threads = dict(os.environ), set(threading.enumerate())
    werkzeug_level = logging.getLogger("werkzeug").level
    local = start_local_stack(schedule_seconds=3600, env_file=tmp_path / "local-env.json",
                              RefreshLeadSeconds="120")
    try:
        summary = local.summary()
        for url in (local.demo_url, local.gateway_url, local.standin.base_url, local.moto_url):
            assert url in summary
        assert "Ctrl-C to stop" in summary
        assert os.environ["AWS_ENDPOINT_URL"] == local.moto_url
        assert local.env["REFRESH_LEAD_SECONDS"] == "120"
        assert local.env["PROVIDER_TOKEN_URL"] == local.standin.base_url + "/oauth2/token"
        assert f"{local.demo_url}" in local.env["ALLOWED_RETURN_ORIGINS"].split(",")

        # A person connects through the demo app, the consent page and the callback.
        browser = requests.Session()
        consent = browser.post(local.demo_url + "/connect", timeout=10)
        assert consent.url.startswith(local.standin.base_url + "/oauth2/authorize")
        form = {k: html.unescape(v) for k, v in re.findall(r'name="([^"]+)" value="([^"]*)"', consent.text)}
        back = browser.post(local.standin.base_url + "/oauth2/authorize/decision",
                            data={**form, "decision": "approve"}, timeout=10)
        assert back.url.startswith(local.demo_url + "/?status=connected")
        assert "Connected as Ada Lovelace" in back.text
        # The browser's keep-alive connections to the gateway and the stand-in are open now.
        assert browser.get(local.gateway_url + "/nothing-here", timeout=10).status_code == 404
        assert browser.get(local.standin_url + "/_control/state", timeout=10).status_code == 200
        # The refresh queue's worker, and the webhook queue's delivery (to the demo app by default).
        assert len(local.schedulers) == 1
        assert sorted(s.function for s in local.sqs_sources) == ["RefreshWorkerFunction", "WebhookFunction"]
        assert local.schedulers[0].run_once() == {"enqueued": 0, "not_enqueued": 0}  # nothing due yet

        written = json.loads((tmp_path / "local-env.json").read_text())
        port = local.moto_url.rsplit(":", 1)[1]
        assert written["RefreshFunction"]["AWS_ENDPOINT_URL"] == f"http://host.docker.internal:{port}"
        assert written["RefreshFunction"]["TOKEN_KEY_ID"] == local.env["TOKEN_KEY_ID"]
    finally:
        local.stop()
    assert dict(os.environ) == before_env
    assert logging.getLogger("werkzeug").level == werkzeug_level  # moto's quiet logging is undone
    # Every thread the stack started ends (they are all daemons: being a daemon proves nothing).
    deadline = time.monotonic() + 5
    for thread in set(threading.enumerate()) - before_threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    leftovers = [t.name for t in set(threading.enumerate()) - before_threads if t.is_alive()]
    assert leftovers == []
    for url in (local.gateway_url, local.demo_url, local.moto_url, local.standin_url):
        with pytest.raises(requests.ConnectionError):
            requests.get(url, timeout=2)
    # A keep-alive connection opened before stop() is cut too: no answer from a stopped stack.
    for url in (local.gateway_url + "/nothing-here", local.standin_url + "/_control/state"):
        with pytest.raises(requests.ConnectionError):
            browser.get(url, timeout=2)


def test_the_stand_in_accepts_only_the_gateways_callback_as_redirect_uri():
    local = start_local_stack(demo=False, schedule=False)
    try:
        callback = f"{local.gateway_url}/oauth/callback"
        assert callback in local.provider.redirect_uris
        assert local.env["PUBLIC_BASE_URL"] + "/oauth/callback" in local.provider.redirect_uris
        params = {"response_type": "code", "client_id": local.provider.client_id, "state": "s"}
        consent = f"{local.standin.base_url}/oauth2/authorize"
        assert requests.get(consent, params={**params, "redirect_uri": callback}, timeout=10).status_code == 200
        wrong = requests.get(consent, params={**params, "redirect_uri": "http://127.0.0.1:1/oauth/callback"},
                             timeout=10)
        assert wrong.status_code == 400 and "not registered" in wrong.text
    finally:
        local.stop()


def test_a_wrong_public_base_url_is_caught_on_the_consent_page():
    local = start_local_stack(demo=False, schedule=False, PublicBaseUrl="https://broker.example.com",
                              AllowedReturnOrigins="http://127.0.0.1:8080")
    try:
        assert local.env["PUBLIC_BASE_URL"] == "https://broker.example.com"
        broker = Broker(local.gateway_url, local.region, keyed_session(local.access_key, local.secret_key))
        session = broker.create_connect_session("user-1", "http://127.0.0.1:8080/")
        # The connect URL names the wrong host; the same path on the gateway gets to the redirect.
        connect_path = urlsplit(session.connect_url)
        redirect = requests.get(f"{local.gateway_url}{connect_path.path}?{connect_path.query}",
                                allow_redirects=False, timeout=10)
        assert redirect.status_code == 302
        assert "redirect_uri=https%3A%2F%2Fbroker.example.com%2Foauth%2Fcallback" in redirect.headers["Location"]
        consent = requests.get(redirect.headers["Location"], timeout=10)
        assert consent.status_code == 400 and "not registered" in consent.text
    finally:
        local.stop()


def test_the_summary_shows_only_the_default_secret():
    local = start_local_stack(demo=False, schedule=False, standin=False, secret_key="not-the-default")
    try:
        assert "not-the-default" not in local.summary()
        assert "(from AWS_SECRET_ACCESS_KEY)" in local.summary()
    finally:
        local.stop()


def test_a_configured_provider_starts_no_stand_in():
    local = start_local_stack(demo=False, schedule=False, environ={
        "PROVIDER_AUTHORIZE_URL": "https://login.example.com/authorize",
        "PROVIDER_TOKEN_URL": "https://login.example.com/token", "OAUTH_CLIENT_ID": "real-id"})
    try:
        assert local.standin is None and local.demo is None and local.schedulers == []
        assert local.env["PROVIDER_AUTHORIZE_URL"] == "https://login.example.com/authorize"
        assert local.env["PROVIDER_API_BASE_URL"] == "https://api.insightly.com/v3.1"  # the template default
    finally:
        local.stop()


def test_unknown_options_are_refused():
    with pytest.raises(TypeError, match="NoSuchParameter"):
        start_local_stack(NoSuchParameter="x")


def test_a_taken_moto_port_fails_fast_instead_of_hanging():
    import socket

    from local.aws import MotoServer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            MotoServer(port=taken.getsockname()[1]).start()


def test_webhook_url_and_secret_from_the_environment_get_every_lifecycle_event_signed():
    """make local WEBHOOK_URL=... WEBHOOK_SECRET=...: an http receiver on this machine gets the
    events, and they verify with the secret it was given."""
    import base64
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from standardwebhooks import Webhook

    from broker.platform.lifecycle import LifecycleEvents

    got = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(({k.lower(): v for k, v in self.headers.items()},
                        self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    secret = "whsec_" + base64.b64encode(b"s" * 24).decode()
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hooks"
    local = start_local_stack(demo=False, schedule=False, environ={"WEBHOOK_URL": url, "WEBHOOK_SECRET": secret})
    try:
        assert local.webhook_url == url and "Webhooks" in local.summary() and secret not in local.summary()
        LifecycleEvents(local.session.client("events"), local.env["EVENT_BUS_NAME"]).emit(
            "NeedsReauth", connection_id="env-user", status="needs_reauth", reason="invalid_grant", at=1)
        deadline = time.monotonic() + 15
        while not got and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        local.stop()
        receiver.shutdown()
        receiver.server_close()
    headers, body = got[0]
    payload = Webhook(secret).verify(body, headers)
    assert payload["type"] == "NeedsReauth" and payload["connection_id"] == "env-user"


def test_a_webhook_secret_that_is_no_standard_webhooks_key_stops_before_anything_starts():
    threads = threading.active_count()
    with pytest.raises(ValueError, match="WEBHOOK_SECRET"):
        start_local_stack(demo=False, environ={"WEBHOOK_URL": "http://127.0.0.1:9/x", "WEBHOOK_SECRET": "short"})
    assert threading.active_count() == threads
