"""What a backend that signs with botocore gets for proxy paths holding `.`/`..` segments or
encoded dots (`%2e`), sent with requests as it is usually called, and sent byte for byte as
docs/integration.md says.

requests rewrites the URL after it was signed: it drops dot segments (so `Contacts/../Users/Me`
silently becomes another call, `Users/Me`) and decodes `%2E` to `.` (the gateway then checks
the signature over another path: 403). Sent byte for byte (percent-escapes in upper case, as
urllib3 writes them, and a prepared request whose URL is set after preparation), the broker
sees the path as written and refuses every such spelling itself: 400 invalid_path."""

from __future__ import annotations

import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

pytestmark = pytest.mark.e2e

ODD_PATHS = ["Contacts/../Users/Me", "Contacts/./Users/Me", "Contacts/%2E%2E/Users/Me", "Contacts/%2E/Users/Me"]


def signed_headers(local, method: str, url: str) -> dict[str, str]:
    request = AWSRequest(method=method, url=url)
    SigV4Auth(Credentials(local.access_key, local.secret_key), "execute-api", local.region).add_auth(request)
    return dict(request.headers)


def send_byte_for_byte(method: str, url: str, headers: dict[str, str]) -> requests.Response:
    prepared = requests.Request(method, url, headers=headers).prepare()
    prepared.url = url  # prepare() normalised it; the signature is over this exact URL
    with requests.Session() as session:
        return session.send(prepared, timeout=10)


@pytest.mark.parametrize("path", ODD_PATHS)
def test_an_odd_path_sent_byte_for_byte_is_refused_by_the_broker(local, path):
    url = f"{local.gateway_url}/connections/odd-paths/proxy/{path}"
    calls = len(local.provider.api_requests)

    answer = send_byte_for_byte("GET", url, signed_headers(local, "GET", url))

    assert (answer.status_code, answer.headers.get("X-Broker-Error")) == (400, "invalid_path")
    assert answer.json()["error"] == "invalid_path"
    assert len(local.provider.api_requests) == calls  # nothing reached Insightly


def test_requests_drops_dot_segments_after_signing_so_another_path_is_called(local):
    url = f"{local.gateway_url}/connections/odd-paths/proxy/Contacts/../Users/Me"

    answer = requests.get(url, headers=signed_headers(local, "GET", url), timeout=10)

    # The signature still matches (botocore drops them too), but the broker was asked for
    # Users/Me, not the path the caller wrote: a 404 for this unknown connection, no 400.
    assert answer.status_code == 404 and answer.json()["error"] == "connection_not_found"


def test_requests_decodes_encoded_dots_after_signing_so_the_signature_fails(local):
    url = f"{local.gateway_url}/connections/odd-paths/proxy/Contacts/%2E%2E/Users/Me"

    answer = requests.get(url, headers=signed_headers(local, "GET", url), timeout=10)

    assert answer.status_code == 403 and "signature" in answer.json()["message"]
