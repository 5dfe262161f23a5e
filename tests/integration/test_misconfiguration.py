"""A misconfigured deployment answers `misconfigured` and nothing more; the log names the
variable (never its value) for the operator."""

import pytest

from broker import services

BAD_TOKEN_URLS = {
    "javascript": "javascript:alert(document.cookie)",
    "file": "file:///var/task/secret.txt",
    "metadata": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "private": "https://10.1.2.3/oauth2/token",
    "loopback": "https://127.0.0.1/oauth2/token",
    "userinfo": "https://user:hunter2@api.insightly.com/v3.1/oauth2/token",
}


def misconfigure(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    services.reset()  # a new container reads the environment again


def assert_only_misconfigured(answer, value):
    assert answer.status == 500, answer.body
    assert answer.json == {"error": "misconfigured", "message": "the broker is misconfigured"}
    assert value not in (answer.body or "") and value not in str(answer.headers)


@pytest.mark.parametrize("kind", sorted(BAD_TOKEN_URLS))
def test_a_bad_provider_url_makes_every_route_answer_misconfigured_without_the_value(broker, monkeypatch,
                                                                                     captured_logs, kind):
    value = BAD_TOKEN_URLS[kind]
    misconfigure(monkeypatch, "PROVIDER_TOKEN_URL", value)

    answers = [
        broker.call("GET", "/oauth/authorize", query="session=" + "a" * 43),  # public
        broker.call("GET", "/oauth/callback", query="state=" + "b" * 43, cookies=["ic_oauth_browser=" + "c" * 43]),
        broker.call("POST", "/connect-sessions", body={"connection_id": "user-1", "return_to": "https://app.example.com/"}),
        broker.call("GET", "/connections/user-1/token"),
    ]

    for answer in answers:
        assert_only_misconfigured(answer, value)
    logs = captured_logs.getvalue()
    assert "PROVIDER_TOKEN_URL" in logs
    assert value not in logs


@pytest.mark.parametrize("name,value", [
    ("PROVIDER_TOKEN_AUTH_METHOD", "private_key_jwt-from-the-wiki"),
    ("COOKIE_SECURE", "yes-please-internal-note"),
    ("ALLOWED_RETURN_ORIGINS", "https://intranet.corp.example/internal-path"),
])
def test_any_bad_setting_answers_the_public_routes_without_its_value(broker, monkeypatch, captured_logs, name, value):
    misconfigure(monkeypatch, name, value)

    answer = broker.call("GET", "/oauth/authorize", query="session=" + "a" * 43)

    assert_only_misconfigured(answer, value)
    assert name in captured_logs.getvalue() and value not in captured_logs.getvalue()
