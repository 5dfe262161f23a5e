"""local/sam-local-env.json (for `sam local start-api/invoke --env-vars`) matches the template:
one entry per function, each with every variable the template gives that function."""

import json

import pytest

from local.__main__ import sam_env
from local.stack import ROOT, Stack, load_template

ENV_FILE = ROOT / "local" / "sam-local-env.json"


@pytest.fixture(scope="module")
def template():
    return load_template()


@pytest.fixture(scope="module")
def env_file():
    return json.loads(ENV_FILE.read_text())


def template_variables(template, logical):
    global_env = template["Globals"]["Function"]["Environment"]["Variables"]
    own = template["Resources"][logical]["Properties"].get("Environment", {}).get("Variables", {})
    return set(global_env) | set(own)


def test_one_entry_per_function_of_the_template(template, env_file):
    # the functions of the default stack (WebhookFunction exists only with a WebhookUrl)
    functions = {k for k, v in template["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}
    assert set(env_file) == set(Stack().of_type("AWS::Serverless::Function")) == functions - {"WebhookFunction"}


def test_every_template_variable_and_nothing_unknown(template, env_file):
    for logical, variables in env_file.items():
        assert isinstance(variables, dict)  # sam refuses any other top-level value
        assert set(variables) == template_variables(template, logical), logical
        assert all(isinstance(value, str) for value in variables.values()), logical


def test_it_points_the_functions_at_this_machine_from_a_container(env_file):
    for variables in env_file.values():
        assert variables["AWS_ENDPOINT_URL"] == "http://host.docker.internal:5000"
        for key in ("PROVIDER_AUTHORIZE_URL", "PROVIDER_TOKEN_URL", "PROVIDER_API_BASE_URL"):
            assert variables[key].startswith("http://host.docker.internal:9000/v3.1")
        assert variables["PUBLIC_BASE_URL"] == "http://127.0.0.1:3000"
        assert variables["COOKIE_SECURE"] == "false"
        assert variables["CONNECTIONS_TABLE"] == "insightly-connect-ConnectionsTable"
        assert variables["FLOW_TABLE"] == "insightly-connect-FlowTable"


def test_the_generated_copy_has_the_committed_shape(env_file):
    generated = sam_env(Stack(), aws_endpoint_url="http://127.0.0.1:5000")
    assert {k: set(v) for k, v in generated.items()} == {k: set(v) for k, v in env_file.items()}


def test_sam_local_can_set_the_aws_endpoint(template, monkeypatch):
    # sam local only passes variables the template declares; in AWS the value is empty...
    assert template["Globals"]["Function"]["Environment"]["Variables"]["AWS_ENDPOINT_URL"] == ""
    # ...and boto3 then uses the real regional endpoint.
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", "")
    assert boto3.client("dynamodb", region_name="eu-west-1").meta.endpoint_url == "https://dynamodb.eu-west-1.amazonaws.com"


def test_the_functions_in_a_container_accept_the_local_stand_in_and_deployed_ones_would_not(template, env_file):
    from broker.platform.config import Settings
    from broker.platform.errors import ConfigurationError

    assert template["Globals"]["Function"]["Environment"]["Variables"]["ALLOW_LOOPBACK_HTTP_PROVIDER"] == "false"
    for variables in env_file.values():
        assert Settings.from_env(variables).provider.token_url.startswith("http://host.docker.internal:9000/")
        with pytest.raises(ConfigurationError):
            Settings.from_env({**variables, "ALLOW_LOOPBACK_HTTP_PROVIDER": "false"})


def test_api_key_calls_from_a_container_reach_the_stand_in_on_this_machine(env_file):
    # The committed file, and what `make local` writes for its own stand-in: the {pod} stays.
    for variables in env_file.values():
        assert variables["INSIGHTLY_API_URL_TEMPLATE"] == "http://host.docker.internal:9000/{pod}/v3.1"
    stack = Stack(parameters={"InsightlyApiUrlTemplate": "http://127.0.0.1:9123/{pod}/v3.1"})
    for variables in sam_env(stack, aws_endpoint_url="http://127.0.0.1:5000").values():
        assert variables["INSIGHTLY_API_URL_TEMPLATE"] == "http://host.docker.internal:9123/{pod}/v3.1"
