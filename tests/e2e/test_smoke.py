"""`make smoke` (issue 11, point 7): its checks pass against the local stack, a stack that
misbehaves fails them (exit 1), and answers are validated against an OpenAPI document."""

import pytest

from tests import smoke
from tests.support.openapi import DOCUMENT


def run_against(local, monkeypatch, **environ):
    """`make smoke` with API_URL: the deployed-stack path, pointed at the local stack (the
    default credential chain finds the local stack's keys in the environment)."""
    lines = []
    code = smoke.main({"API_URL": local.gateway_url, "AWS_REGION": local.region,
                       "RETURN_TO": f"{local.demo_url}/after-connect", **environ}, out=lines.append)
    return code, lines


def verdicts(lines):
    return {line.split(":")[0].split("  ", 1)[1]: line.split("  ")[0] for line in lines[1:]}


def test_make_smoke_starts_a_local_stack_and_passes(monkeypatch):
    lines = []
    assert smoke.main({}, out=lines.append) == 0, lines
    assert list(verdicts(lines).values()) == ["PASS"] * 5  # docs/openapi.yaml included


@pytest.mark.parametrize("auth_mode", ["oauth2", "api_key"])
def test_the_checks_pass_against_a_running_stack_with_its_contract(local, monkeypatch, auth_mode):
    code, lines = run_against(local, monkeypatch, AUTH_MODE=auth_mode,
                              PROVIDER_AUTHORIZE_URL=local.stack.parameters["ProviderAuthorizeUrl"])

    assert code == 0, lines
    assert set(verdicts(lines).values()) == {"PASS"}


def test_a_stack_that_answers_an_unsigned_call_fails_the_smoke_test(local, monkeypatch):
    # The IAM authorizer gone: every caller is let through.
    monkeypatch.setattr(local.gateway.verifier, "verify", lambda *args, **kwargs: local.access_key)

    code, lines = run_against(local, monkeypatch)

    assert code == 1
    assert verdicts(lines)["unsigned backend call is 403"] == "FAIL"
    assert "not 403" in next(line for line in lines if line.startswith("FAIL"))
    assert verdicts(lines)["unknown connection is 404"] == "PASS"  # one line per check, all run


def test_an_answer_the_contract_does_not_describe_fails_the_smoke_test(local, monkeypatch, tmp_path):
    contract = tmp_path / "openapi.yaml"
    # docs/openapi.yaml without the live 404's error code in its enum
    contract.write_text(DOCUMENT.read_text().replace("        - connection_not_found\n", "", 1))

    code, lines = run_against(local, monkeypatch, OPENAPI=str(contract))

    assert code == 1
    failed = [line for line in lines if line.startswith("FAIL")]
    assert len(failed) == 1 and "404: error" in failed[0] and "connection_not_found" in failed[0], lines


def test_without_credentials_a_deployed_smoke_test_does_not_start(monkeypatch):
    monkeypatch.setattr("botocore.session.Session.get_credentials", lambda self: None)
    lines = []
    assert smoke.main({"API_URL": "https://abc.execute-api.eu-west-1.amazonaws.com"}, out=lines.append) == 2
    assert "credentials" in lines[0]
