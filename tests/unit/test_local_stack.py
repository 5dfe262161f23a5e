"""start_local_stack(): the whole `make local` stack in-process on free ports, and stopped cleanly."""

import html
import json
import os
import re
import threading

import pytest
import requests

from tests.local import start_local_stack


def test_the_whole_stack_starts_connects_and_stops_cleanly(tmp_path):
    before_env, before_threads = dict(os.environ), set(threading.enumerate())
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
        assert len(local.schedulers) == 1 and [s.function for s in local.sqs_sources] == ["RefreshWorkerFunction"]
        assert local.schedulers[0].run_once() == {"enqueued": 0, "not_enqueued": 0}  # nothing due yet

        written = json.loads((tmp_path / "local-env.json").read_text())
        port = local.moto_url.rsplit(":", 1)[1]
        assert written["RefreshFunction"]["AWS_ENDPOINT_URL"] == f"http://host.docker.internal:{port}"
        assert written["RefreshFunction"]["TOKEN_KEY_ID"] == local.env["TOKEN_KEY_ID"]
    finally:
        local.stop()
    assert dict(os.environ) == before_env
    leftovers = [t for t in set(threading.enumerate()) - before_threads if t.is_alive() and not t.daemon]
    assert leftovers == []
    for url in (local.gateway_url, local.demo_url, local.moto_url):
        with pytest.raises(requests.ConnectionError):
            requests.get(url, timeout=2)


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

    from tests.local.aws import MotoServer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            MotoServer(port=taken.getsockname()[1]).start()
