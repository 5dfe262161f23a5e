"""The Python client (clients/python) against the local stack of tests/clients/stack.py."""

from urllib.parse import parse_qsl, urlsplit

import botocore.session
import pytest
import requests

from insightly_connect import Broker
from tests.clients.stack import start_client_stack
from tests.e2e.conftest import standin  # noqa: F401 - the stand-in's control endpoints, reset after each test


@pytest.fixture(scope="module")
def stack():
    started = start_client_stack()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def local(stack):
    """The stack's LocalStack, for the e2e fixtures reused here."""
    return stack.local


def local_session(stack) -> botocore.session.Session:
    """A botocore session holding the local stack's credentials, as a deployed backend holds its role's."""
    session = botocore.session.Session()
    session.set_credentials(stack.local.access_key, stack.local.secret_key)
    return session


@pytest.fixture
def broker(stack):
    with Broker(stack.local.gateway_url, region=stack.local.region, session=local_session(stack)) as client:
        yield client


def approve_in_browser(stack, connect_url: str) -> dict[str, str]:
    """The user's browser, hop by hop: connect_url -> the stand-in's consent (approved) -> the
    broker's callback. Answers the query the browser brings back to return_to."""
    browser = requests.Session()
    to_provider = browser.get(connect_url, allow_redirects=False, timeout=10)
    assert to_provider.status_code == 302, to_provider.text
    consent = dict(parse_qsl(urlsplit(to_provider.headers["Location"]).query))
    back = browser.post(f"{stack.local.provider_base_url}/oauth2/authorize/decision",
                        data={**consent, "decision": "approve"}, allow_redirects=False, timeout=10)
    landing = browser.get(back.headers["Location"], allow_redirects=False, timeout=20)
    assert landing.status_code == 302, landing.text
    return dict(parse_qsl(urlsplit(landing.headers["Location"]).query))
