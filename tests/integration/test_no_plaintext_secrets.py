"""Invariant 6: no plaintext credential in DynamoDB, logs, metrics or error bodies."""

import json

from broker.connect.oauth_flow import pkce_verifier
from tests.conftest import all_items
from tests.integration.test_tokens import make_due
from tests.support.inprocess import query_of


def test_no_token_code_verifier_or_secret_is_stored_logged_or_emitted(broker, dynamodb, stack, capfd, captured_logs,
                                                                    lifecycle_events):
    provider = broker.provider
    seen_secrets = [provider.client_secret]
    answers = []

    # Given a full life: connect, tokens, a refresh, failures, a second connection
    session = broker.create_session("user-1")
    seen_secrets.append(query_of(session.json["connect_url"])["session"])
    redirect = broker.authorize(session.json["connect_url"])
    state, cookie = query_of(redirect.location)["state"], redirect.cookie("ic_oauth_browser").value
    seen_secrets += [state, cookie, pkce_verifier(cookie, state)]
    landing = broker.callback(provider.approve(redirect.location), cookie)
    returned = query_of(landing.location)
    seen_secrets += [session.json["session_id"], returned["completion_code"]]
    answers.append(broker.complete(returned["session_id"], returned["completion_code"]))
    answers.append(broker.call("GET", "/connections/user-1/token"))
    make_due(dynamodb, stack)
    answers.append(broker.call("GET", "/connections/user-1/token"))
    provider.fail_next("500")
    answers.append(broker.call("POST", "/connections/user-1/refresh"))
    answers.append(broker.call("GET", "/connections/user-1"))
    broker.connect("user-2")
    provider.fail_next("invalid_grant")
    answers.append(broker.call("POST", "/connections/user-2/refresh"))
    session = broker.create_session("user-3")
    redirect = broker.authorize(session.json["connect_url"])
    provider.fail_next("invalid_grant")  # a failed code exchange
    answers.append(broker.callback(provider.approve(redirect.location), redirect.cookie("ic_oauth_browser").value))
    seen_secrets += provider.issued  # every code, access token and refresh token

    # Then none of them is in any stored item (nor inside its binary attributes)
    stored = json.dumps(all_items(dynamodb, stack), default=lambda raw: bytes(raw).decode("latin-1"))
    # nor in anything printed: logs, EMF metrics
    printed = capfd.readouterr()
    output = printed.out + printed.err + captured_logs.getvalue()
    assert '"connection_id":"user-1"' in output and "RefreshSucceeded" in output  # logs and metrics were captured
    # nor in the lifecycle events the SaaS receives
    events = json.dumps(lifecycle_events())
    assert '"NeedsReauth"' in events and '"Connected"' in events
    # nor in error bodies
    errors = " ".join(a.body or "" for a in answers if a.status >= 400)
    for secret in seen_secrets:
        assert secret not in stored, "plaintext secret stored in DynamoDB"
        assert secret not in output, "plaintext secret in logs or metrics"
        assert secret not in errors, "plaintext secret in an error body"
        assert secret not in events, "plaintext secret in a lifecycle event"
