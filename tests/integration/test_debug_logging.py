"""Turning every debug switch on leaks nothing: the root logger at DEBUG (Lambda's
ApplicationLogLevel=DEBUG) and POWERTOOLS_LOGGER_LOG_EVENT=true, through a connect and
refreshes, with ALL log output captured (root handler and stdout)."""

import io
import logging

import pytest

import tests.support.inprocess as inprocess
from broker.connect.oauth_flow import pkce_verifier
from broker.platform.observability import logger
from local.lambda_events import load_handler
from tests.integration.test_tokens import make_due
from tests.support.inprocess import query_of

FRESH_COPY = 700  # handler modules imported anew here, as a new container would


@pytest.fixture
def every_debug_switch_on(broker, monkeypatch):
    """Switched on after the test stack is set up (its own calls are not the broker's)."""
    # Read by Powertools when a handler is decorated: import the handlers again with it set.
    monkeypatch.setenv("POWERTOOLS_LOGGER_LOG_EVENT", "true")
    monkeypatch.setenv("AWS_LAMBDA_LOG_LEVEL", "DEBUG")
    monkeypatch.setattr(inprocess, "load_handler", lambda code_uri: load_handler(code_uri, copy=FRESH_COPY))
    root, stream = logging.getLogger(), io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    saved_level, saved_broker_level = root.level, logger.log_level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    logger.setLevel("DEBUG")
    yield stream
    root.removeHandler(handler)
    root.setLevel(saved_level)
    logger.setLevel(saved_broker_level)


def test_debug_logs_and_event_logging_show_no_secret_code_state_session_or_cookie(
        every_debug_switch_on, broker, dynamodb, stack, capfd, captured_logs):
    provider = broker.provider
    seen = [provider.client_secret]

    session = broker.create_session("user-1")
    seen.append(query_of(session.json["connect_url"])["session"])
    redirect = broker.authorize(session.json["connect_url"])
    state, cookie = query_of(redirect.location)["state"], redirect.cookie("ic_oauth_browser").value
    seen += [state, cookie, pkce_verifier(cookie, state)]
    landing = broker.callback(provider.approve(redirect.location), cookie)
    returned = query_of(landing.location)
    seen.append(returned["completion_code"])
    assert broker.complete(returned["session_id"], returned["completion_code"]).status == 200
    assert broker.call("GET", "/connections/user-1/token").status == 200
    make_due(dynamodb, stack)
    assert broker.call("GET", "/connections/user-1/token").status == 200  # refreshed on the way
    assert broker.call("POST", "/connections/user-1/refresh").status == 200
    assert broker.call("DELETE", "/connections/user-1").status == 204  # revocation
    seen += provider.issued  # every code, access token and refresh token

    printed = capfd.readouterr()
    output = every_debug_switch_on.getvalue() + printed.out + printed.err + captured_logs.getvalue()
    assert "\nDEBUG " in output  # the switch was on
    assert '"connection_id":"user-1"' in output  # and the broker's own lines were captured
    for value in seen:
        assert value not in output
