"""Property-based tests of docs/openapi.yaml against the local stack (`make fuzz`).

Schemathesis generates requests for every operation of the document, sends them to the local
gateway (backend routes signed with SigV4 by a small requests auth, as a SaaS backend signs
them) and holds every answer to the contract: no 5xx, only documented status codes and content
types, bodies and headers valid against their schemas. The stateful test follows the links of
POST /connect-sessions (complete, status, tags, token, delete). Bounded by FUZZ_EXAMPLES
(examples per operation) so the run takes about two minutes on 2 cores.
"""

import os

import hypothesis
import pytest
import requests
import schemathesis
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from local import start_local_stack
from tests.support.openapi import DOCUMENT

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
STATEFUL_EXAMPLES = int(os.environ.get("FUZZ_STATEFUL_EXAMPLES", "15"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=list(hypothesis.HealthCheck))

# The return_to of the document's example is allowed, so created sessions feed the links.
LOCAL = start_local_stack(schedule=False, demo=False, AllowedReturnOrigins="https://app.example.com")
schema = schemathesis.openapi.from_path(DOCUMENT)
schema.config.update(base_url=LOCAL.gateway_url)
# Valid and invalid requests alike: an invalid one must be a documented 4xx, never a 5xx.
schema.config.generation.update(modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])


class SigV4(requests.auth.AuthBase):
    """Signs the request as it goes on the wire (body, query and headers final), as botocore does
    for the SaaS backend; browser routes are sent as they are (the gateway would ignore it)."""

    def __init__(self, local):
        self.credentials = Credentials(local.access_key, local.secret_key)
        self.region = local.region

    def __call__(self, prepared: requests.PreparedRequest) -> requests.PreparedRequest:
        if prepared.path_url.startswith(("/oauth/", "/connect/")):
            prepared.headers.pop("Authorization", None)
            return prepared
        body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
        request = AWSRequest(method=prepared.method, url=prepared.url, data=body,
                             headers={k: v for k, v in prepared.headers.items() if k.lower() != "authorization"})
        SigV4Auth(self.credentials, "execute-api", self.region).add_auth(request)
        prepared.headers.update(dict(request.headers))
        return prepared


SIGNED = requests.Session()
SIGNED.auth = SigV4(LOCAL)


@pytest.fixture(scope="session", autouse=True)
def local_stack():
    yield LOCAL
    LOCAL.stop()


@schema.parametrize()
@hypothesis.settings(max_examples=EXAMPLES, **SETTINGS)
def test_every_operation_answers_as_documented(case):
    case.call_and_validate(session=SIGNED, checks=CHECKS, timeout=30)


class Workflow(schema.as_state_machine()):
    def call(self, case, **kwargs):
        return case.call(session=SIGNED, timeout=30, **kwargs)

    def validate_response(self, response, case, additional_checks=None, **kwargs):
        case.validate_response(response, checks=CHECKS)


TestConnectSessionWorkflow = Workflow.TestCase
TestConnectSessionWorkflow.settings = hypothesis.settings(max_examples=STATEFUL_EXAMPLES, stateful_step_count=6,
                                                          **SETTINGS)
