"""The deployed shape: least privilege, the contract's routes and auth, template-driven config."""

import fnmatch
import json
import re
from pathlib import Path

import pytest

from local.stack import Stack, load_template, parameter_env_name

TEMPLATE = load_template()
RESOURCES = TEMPLATE["Resources"]
# The functions' roles; BrokerCallerRole (assumed by callers in other accounts) is tested below.
ROLES = {k: v for k, v in RESOURCES.items() if v["Type"] == "AWS::IAM::Role" and k != "BrokerCallerRole"}
FUNCTIONS = {k: v for k, v in RESOURCES.items() if v["Type"] == "AWS::Serverless::Function"}


def statements(document):
    found = document.get("Statement", [])
    return found if isinstance(found, list) else [found]


def role_statements():
    for role_name, role in ROLES.items():
        for policy in role["Properties"].get("Policies", []):
            for statement in statements(policy["PolicyDocument"]):
                yield role_name, statement


def as_list(value):
    return value if isinstance(value, list) else [value]


def test_every_function_has_its_own_role():
    roles = [f["Properties"]["Role"]["Fn::GetAtt"][0] for f in FUNCTIONS.values()]
    assert sorted(roles) == sorted(ROLES) and len(set(roles)) == len(roles)


@pytest.mark.parametrize("role_name,statement", list(role_statements()))
def test_no_role_statement_has_a_wildcard_resource_scan_or_kms(role_name, statement):
    assert "*" not in json.dumps(statement.get("Resource")), f"{role_name}: wildcard resource"
    actions = [a.lower() for a in as_list(statement["Action"])]
    assert not any("*" in a for a in actions), f"{role_name}: wildcard action"
    assert "dynamodb:scan" not in actions
    assert not any(a.startswith("kms:") for a in actions), "KMS is granted in the key policy only"


def test_no_sam_policy_templates_or_crud_policies():
    text = json.dumps(TEMPLATE)
    assert "CrudPolicy" not in text and "dynamodb:*" not in text.lower()
    for function in FUNCTIONS.values():
        assert "Policies" not in function["Properties"]


TOKEN_SET, API_KEY = "oauth2-token-set", "insightly-api-key"  # the vault's encryption-context purposes
USE_ACTIONS = {"kms:encrypt", "kms:decrypt", "kms:reencrypt*", "kms:generatedatakey", "kms:generatedatakey*",
               "kms:*", "kms:create*"}


def key_use_grants() -> dict[str, set[tuple[str, str]]]:
    """{role: {(kms action, encryption-context purpose)}} from the key policy; checks that every
    use is bound to one connection and to named purposes, and that nothing else grants use."""
    granted = {}
    for statement in statements(RESOURCES["TokenKey"]["Properties"]["KeyPolicy"]):
        actions = {a.lower() for a in as_list(statement["Action"])}
        if not actions & USE_ACTIONS:
            assert not any(a.startswith(("kms:encrypt", "kms:decrypt", "kms:generate", "kms:reencrypt"))
                           or a in ("kms:*", "kms:create*", "kms:creategrant") for a in actions)
            continue
        condition = statement["Condition"]
        # No other operator (StringLike, ...) that could widen the purpose or the context.
        assert set(condition) == {"StringEquals", "ForAllValues:StringEquals", "Null"}, statement["Sid"]
        assert list(condition["StringEquals"]) == ["kms:EncryptionContext:purpose"], statement["Sid"]
        purposes = as_list(condition["StringEquals"]["kms:EncryptionContext:purpose"])
        assert set(purposes) <= {TOKEN_SET, API_KEY}, statement["Sid"]
        assert sorted(condition["ForAllValues:StringEquals"]["kms:EncryptionContextKeys"]) == [
            "connection_id", "purpose"]
        assert condition["Null"] == {"kms:EncryptionContext:connection_id": "false"}
        for principal in as_list(statement["Principal"]["AWS"]):
            granted.setdefault(principal["Fn::GetAtt"][0], set()).update(
                (action, purpose) for action in actions for purpose in purposes)
    return granted


def test_key_policy_grants_each_role_only_the_actions_and_purposes_it_needs():
    key = RESOURCES["TokenKey"]["Properties"]
    assert key["EnableKeyRotation"] is True
    # Envelope encryption: sealing asks for a data key (GenerateDataKey); kms:Encrypt is not used.
    assert key_use_grants() == {
        "CallbackRole": {("kms:generatedatakey", TOKEN_SET)},
        # revokes a replaced grant; seals keys sent to PUT /connections/{connection_id}/api-key
        "ConnectionsRole": {("kms:decrypt", TOKEN_SET), ("kms:generatedatakey", API_KEY)},
        # seals the key typed into the page; it can open nothing
        "KeyPageRole": {("kms:generatedatakey", API_KEY)},
        # hand out and check both kinds; a key check never re-seals
        "RefreshRole": {("kms:decrypt", TOKEN_SET), ("kms:decrypt", API_KEY), ("kms:generatedatakey", TOKEN_SET)},
        "RefreshWorkerRole": {("kms:decrypt", TOKEN_SET), ("kms:decrypt", API_KEY),
                              ("kms:generatedatakey", TOKEN_SET)},
        # the proxy hands out both kinds and renews on an expired token or a 401, like /token
        "ProxyRole": {("kms:decrypt", TOKEN_SET), ("kms:decrypt", API_KEY), ("kms:generatedatakey", TOKEN_SET)},
        # to revoke expired pending completions; it can read no connection item
        "SchedulerRole": {("kms:decrypt", TOKEN_SET)},
    }  # and nothing for the authorize function


def role_grants(role_name: str) -> dict[str, set[str]]:
    """{resource logical id (or ARN text): {action}} of one role's own policies."""
    grants = {}
    for name, statement in role_statements():
        if name != role_name:
            continue
        assert statement["Effect"] == "Allow"
        resource = statement["Resource"]
        if isinstance(resource, dict) and "Fn::GetAtt" in resource:
            resource = resource["Fn::GetAtt"][0]
        grants.setdefault(json.dumps(resource) if not isinstance(resource, str) else resource, set()).update(
            a.lower() for a in as_list(statement["Action"]))
    return grants


# What each role may write to a connection item (dynamodb:Attributes on its UpdateItem).
CONNECT_WRITES = {"connection_id", "schema_version", "version", "created_at", "updated_at", "connected_at", "status",
                  "auth_mode", "credentials", "provider_user", "scopes", "pod", "api_base_url", "rate_limit",
                  "last_checked_at", "tags", "list_tag", "expires_at", "refresh_due_at", "due_shard", "lease_owner",
                  "lease_until", "last_error", "last_refreshed_at", "failure_count", "first_failed_at", "quota_alert",
                  "last_used_at", "throttled_until", "quota_group", "remaining", "observed_at"}
RENEWAL_WRITES = {"connection_id", "schema_version", "version", "updated_at", "status", "credentials", "expires_at",
                  "refresh_due_at", "due_shard", "lease_owner", "lease_until", "last_error", "last_refreshed_at",
                  "failure_count", "first_failed_at", "rate_limit", "quota_alert", "last_checked_at", "last_used_at",
                  "throttled_until", "last_signal_at", "quota_group", "remaining", "observed_at"}
CONNECTION_WRITES = {
    "CallbackRole": CONNECT_WRITES, "KeyPageRole": CONNECT_WRITES,
    "ConnectionsRole": CONNECT_WRITES | {"metadata"},
    "RefreshRole": RENEWAL_WRITES, "ProxyRole": RENEWAL_WRITES, "RefreshWorkerRole": RENEWAL_WRITES,
}


def connection_writes(role_name):
    """The attributes the role's statements let it write to connection items; None: any."""
    writable = set()
    for name, statement in role_statements():
        actions = set(as_list(statement["Action"]))
        if name != role_name or statement["Resource"] != {"Fn::GetAtt": ["ConnectionsTable", "Arn"]}:
            continue
        assert not actions & {"dynamodb:PutItem", "dynamodb:BatchWriteItem"}  # whole items: any attribute
        if "dynamodb:UpdateItem" in actions:
            attributes = statement.get("Condition", {}).get("ForAllValues:StringEquals", {}).get("dynamodb:Attributes")
            if attributes is None:
                return None
            writable |= set(attributes)
    return writable


@pytest.mark.parametrize("role_name", sorted(ROLES))
def test_each_role_writes_only_its_own_attributes_of_a_connection(role_name):
    assert connection_writes(role_name) == CONNECTION_WRITES.get(role_name, set())


def test_no_role_that_renews_or_proxies_may_write_where_a_credential_goes():
    destination = {"pod", "api_base_url", "auth_mode"}
    for role_name in ("RefreshRole", "ProxyRole", "RefreshWorkerRole"):
        assert not connection_writes(role_name) & destination, role_name


def test_the_key_page_stores_a_key_but_reads_no_connection_and_no_client_secret():
    # The page is public: whoever gets code execution in it must find nothing stored to read.
    assert role_grants("KeyPageRole") == {
        # the session survives a mistyped key (GetItem), counts refused attempts (UpdateItem),
        # is consumed on success (DeleteItem), which stores the pending completion (PutItem)
        "FlowTable": {"dynamodb:getitem", "dynamodb:updateitem", "dynamodb:deleteitem", "dynamodb:putitem"},
        "ConnectionsTable": {"dynamodb:updateitem"},  # links at once when SessionBinding is none
        "LifecycleBus": {"events:putevents"},
    }
    assert not any(action.startswith("kms:decrypt") for action, _ in key_use_grants()["KeyPageRole"])


ACCOUNT = "arn:aws:iam::123456789012:root"
KEY_ADMINS = ["arn:aws:iam::123456789012:role/security-admin", "arn:aws:iam::123456789012:role/deployer"]
# What lets a principal rewrite, disable or delete the key (rewriting the policy grants Decrypt).
CONTROL_ACTIONS = ["kms:putkeypolicy", "kms:disablekey", "kms:schedulekeydeletion", "kms:creategrant",
                   "kms:updatekeydescription", "kms:enablekey", "kms:cancelkeydeletion"]


def who_may(policy: dict, action: str) -> list[tuple[str, dict]]:
    """(principal, condition) for every Allow statement that covers the action."""
    return [(principal, statement.get("Condition", {})) for statement in statements(policy)
            if statement["Effect"] == "Allow"
            and any(fnmatch.fnmatch(action, a.lower()) for a in as_list(statement["Action"]))
            for principal in as_list(statement["Principal"]["AWS"])]


def key_policy(**parameters) -> dict:
    return Stack(parameters=parameters).resolve(RESOURCES["TokenKey"]["Properties"]["KeyPolicy"])


def test_by_default_the_account_administers_the_key_through_iam():
    policy = key_policy()

    for action in ("kms:putkeypolicy", "kms:disablekey", "kms:schedulekeydeletion"):
        assert (ACCOUNT, {}) in who_may(policy, action)


def test_named_key_administrators_replace_the_account_and_only_the_root_user_can_recover_the_key():
    policy = key_policy(KeyAdministratorArns=",".join(KEY_ADMINS))

    for action in CONTROL_ACTIONS:
        for principal, condition in who_may(policy, action):
            # IAM identities of the account get nothing that could grant them Decrypt; the root
            # user itself (aws:PrincipalType Account) keeps the key manageable, as AWS advises.
            assert principal in KEY_ADMINS or condition == {"StringEquals": {"aws:PrincipalType": "Account"}}, action
    for admin in KEY_ADMINS:
        assert (admin, {}) in who_may(policy, "kms:putkeypolicy")  # the deployer must be one (lockout check)
    assert (ACCOUNT, {"StringEquals": {"aws:PrincipalType": "Account"}}) in who_may(policy, "kms:putkeypolicy")
    assert (ACCOUNT, {}) in who_may(policy, "kms:describekey")  # inventory and audit tools still see the key
    decrypters = {principal.rsplit("-", 1)[-1] for principal, _ in who_may(policy, "kms:decrypt")}
    # not the administrators
    assert decrypters == {"ConnectionsRole", "RefreshRole", "RefreshWorkerRole", "ProxyRole", "SchedulerRole"}


def test_routes_match_the_public_contract_with_iam_on_backend_routes():
    routes = {(r["method"], r["path"]): (r["function"], r["auth"]) for r in Stack().http_routes()}
    assert routes == {
        ("POST", "/connect-sessions"): ("ConnectionsFunction", "AWS_IAM"),
        ("POST", "/connect-sessions/{session_id}/complete"): ("ConnectionsFunction", "AWS_IAM"),
        ("GET", "/oauth/authorize"): ("AuthorizeFunction", "NONE"),
        ("GET", "/oauth/callback"): ("CallbackFunction", "NONE"),
        ("GET", "/connections"): ("ConnectionsFunction", "AWS_IAM"),
        ("GET", "/connections/{connection_id}"): ("ConnectionsFunction", "AWS_IAM"),
        ("GET", "/connections/{connection_id}/token"): ("RefreshFunction", "AWS_IAM"),
        ("POST", "/connections/{connection_id}/refresh"): ("RefreshFunction", "AWS_IAM"),
        ("DELETE", "/connections/{connection_id}"): ("ConnectionsFunction", "AWS_IAM"),
        ("PATCH", "/connections/{connection_id}"): ("ConnectionsFunction", "AWS_IAM"),
        ("PUT", "/connections/{connection_id}/api-key"): ("ConnectionsFunction", "AWS_IAM"),
        ("ANY", "/connections/{connection_id}/proxy/{path+}"): ("ProxyFunction", "AWS_IAM"),
        ("GET", "/connect/api-key"): ("KeyPageFunction", "NONE"),
        ("POST", "/connect/api-key"): ("KeyPageFunction", "NONE"),
    }


def test_the_listing_may_query_only_the_listing_indexes():
    statements = RESOURCES["ConnectionsRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    queries = [s for s in statements if "dynamodb:Query" in s["Action"]]
    assert len(queries) == 1 and all("/index/" in r["Fn::Sub"] for r in queries[0]["Resource"])


def test_api_has_throttling_and_logs_no_bodies_or_query_strings():
    api = RESOURCES["HttpApi"]["Properties"]
    assert api["DefaultRouteSettings"]["ThrottlingBurstLimit"] and api["DefaultRouteSettings"]["ThrottlingRateLimit"]
    log_format = api["AccessLogSettings"]["Format"]
    assert not re.search(r"body|querystring|rawQuery|\$request\.", log_format, re.IGNORECASE)


def test_data_tables_have_pitr_a_sparse_due_index_and_ttl():
    connections = RESOURCES["ConnectionsTable"]["Properties"]
    assert connections["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    index, *listing = connections["GlobalSecondaryIndexes"]
    assert [k["AttributeName"] for k in index["KeySchema"]] == ["due_shard", "refresh_due_at"]
    # GET /connections reads these indexes: keys only (never a credential, never written by a refresh).
    assert {i["IndexName"] for i in listing} == {"status-index", "mode-index", "tag-index"}
    for each in listing:
        assert each["Projection"] == {"ProjectionType": "KEYS_ONLY"}
    flow = RESOURCES["FlowTable"]["Properties"]
    assert flow["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    [pending] = flow["GlobalSecondaryIndexes"]
    # The sweep reads expired completions from the index only: it must see the kind (an API key
    # has nothing to revoke) and the sealed credentials.
    assert {"connection_id", "credentials", "auth_mode"} <= set(pending["Projection"]["NonKeyAttributes"])


def test_the_scheduler_runs_on_the_schedule_parameter():
    [event] = RESOURCES["SchedulerFunction"]["Properties"]["Events"].values()
    assert event["Type"] == "Schedule" and event["Properties"]["Schedule"] == {"Ref": "RefreshSchedule"}
    assert TEMPLATE["Parameters"]["RefreshSchedule"]["Default"] == "rate(5 minutes)"


# Parameters that shape resources, not the code: where each one goes instead.
RESOURCE_PARAMETERS = {
    "RefreshSchedule": "SchedulerFunction", "RefreshWorkerMaxConcurrency": "RefreshWorkerFunction",
    "ExistingClientSecretArn": "Globals", "KeyAdministratorArns": "TokenKey",
    "ApiThrottlingBurstLimit": "HttpApi", "ApiThrottlingRateLimit": "HttpApi", "LogLevel": "Globals",
    "CallerAccountIds": "BrokerCallerRole", "CallerExternalId": "BrokerCallerRole",
    "CallerPermissionSet": "Conditions",
    "WebhookUrl": "WebhookFunction",
    # operations (issue 11): logs and alarms
    "LogRetentionDays": "SchedulerLogGroup", "AlarmEmail": "AlarmEmailSubscription", "AlarmTopicArn": "Conditions",
    "ApiServerErrorRatePercent": "ApiServerErrorRateAlarm", "NeedsReauthPerHourThreshold": "NeedsReauthSurgeAlarm",
    "Proxy429PerHourThreshold": "ProxyProvider429Alarm",
}


def test_every_setting_parameter_reaches_every_function_by_its_env_name():
    env = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    for name in TEMPLATE["Parameters"]:
        if name in RESOURCE_PARAMETERS:
            where = TEMPLATE[RESOURCE_PARAMETERS[name]] if RESOURCE_PARAMETERS[name] in (
                "Globals", "Conditions") else RESOURCES[
                RESOURCE_PARAMETERS[name]]
            assert f'{{"Ref": "{name}"}}' in json.dumps(where), name
        else:
            assert env[parameter_env_name(name)] == {"Ref": name}, name
    for function in FUNCTIONS.values():  # no function overrides a setting with its own value
        assert not set(function["Properties"].get("Environment", {}).get("Variables", {})) & set(env)


def test_the_auth_modes_pattern_allows_exactly_what_the_settings_loader_accepts():
    from broker.platform.config import Settings
    from broker.platform.errors import ConfigurationError

    parameter = TEMPLATE["Parameters"]["AuthModes"]
    env = Stack().function_environment("KeyPageFunction")
    for value in ("oauth2", "api_key", "oauth2,api_key", "api_key,oauth2"):
        assert re.fullmatch(parameter["AllowedPattern"], value), value
        assert Settings.from_env({**env, "AUTH_MODES": value}).auth_modes == tuple(value.split(","))
    for value in ("", "oauth2,oauth2", "api_key,", "OAUTH2", "oauth2, api_key", "basic", "oauth2,api_key,oauth2"):
        assert not re.fullmatch(parameter["AllowedPattern"], value), value
    with pytest.raises(ConfigurationError):
        Settings.from_env({**env, "AUTH_MODES": "oauth2,oauth2"})


def test_the_settings_loader_accepts_the_templates_environment():
    from broker.platform.config import Settings

    stack = Stack()
    settings = Settings.from_env(stack.function_environment("RefreshFunction"))
    assert settings.provider.authorize_url == "https://api.insightly.com/v3.1/oauth2/authorize"
    assert settings.provider.userinfo_url == "https://api.insightly.com/v3.1/Users/Me"
    assert settings.due_index_shards == 8 and settings.cookie_secure is True
    assert settings.auth_modes == ("oauth2", "api_key") and settings.app_name == "this app"
    assert settings.insightly_api_url_template == "https://api.{pod}.insightly.com/v3.1"
    assert settings.api_key_check_seconds == 86400


# -- BrokerCallerRole and the permission sets (issue 10, point 5) ----------------------------------

CALLERS = "111111111111,222222222222"
EXTERNAL_ID = "saas-external-id-0123456789"
API_ARN = "arn:aws:execute-api:us-east-1:123456789012:insightly-connect-HttpApi/$default"
SET_POLICIES = {"token-only": "BrokerTokenOnlyPolicy", "connect": "BrokerConnectPolicy", "admin": "BrokerAdminPolicy"}


def invoke_allowed(document, method: str, path: str) -> bool:
    """IAM's answer for execute-api:Invoke on METHOD path: a matching Deny wins; in execute-api
    ARNs "*" spans "/", as fnmatch's does."""
    arn = f"{API_ARN}/{method}{path}"
    matching = [s["Effect"] for s in statements(document)
                if any(fnmatch.fnmatchcase(arn, r) for r in as_list(s["Resource"]))]
    return "Allow" in matching and "Deny" not in matching


def permission_set(name: str) -> dict:
    return Stack().resolve(RESOURCES[SET_POLICIES[name]]["Properties"]["PolicyDocument"])


def test_without_caller_accounts_there_is_no_caller_role():
    assert "BrokerCallerRole" not in Stack().of_type("AWS::IAM::Role")
    assert RESOURCES["BrokerCallerRole"]["Condition"] == "HasCallerAccounts"
    assert TEMPLATE["Outputs"]["BrokerCallerRoleArn"]["Condition"] == "HasCallerAccounts"


@pytest.mark.parametrize("chosen", [None, "token-only", "connect", "admin"])
def test_the_caller_role_trusts_only_the_listed_accounts_with_the_external_id_and_carries_one_set(chosen):
    parameters = {"CallerAccountIds": CALLERS, "CallerExternalId": EXTERNAL_ID}
    if chosen:
        parameters["CallerPermissionSet"] = chosen
    stack = Stack(parameters=parameters)

    role = stack.resolve(stack.of_type("AWS::IAM::Role")["BrokerCallerRole"]["Properties"])

    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Effect"] == "Allow" and trust["Action"] == "sts:AssumeRole"
    assert trust["Principal"] == {"AWS": ["111111111111", "222222222222"]}
    assert trust["Condition"] == {"StringEquals": {"sts:ExternalId": EXTERNAL_ID}}
    assert role["ManagedPolicyArns"] == [f"insightly-connect-{SET_POLICIES[chosen or 'connect']}"]
    assert "Policies" not in role


def test_the_caller_parameters_refuse_what_is_not_an_account_list_or_an_external_id():
    accounts = TEMPLATE["Parameters"]["CallerAccountIds"]["AllowedPattern"]
    external = TEMPLATE["Parameters"]["CallerExternalId"]["AllowedPattern"]
    for good in ("", "111111111111", CALLERS):
        assert re.fullmatch(accounts, good), good
    for bad in ("*", "11111111111", "111111111111,", "111111111111, 222222222222", "arn:aws:iam::111111111111:root"):
        assert not re.fullmatch(accounts, bad), bad
    assert re.fullmatch(external, EXTERNAL_ID) and not re.fullmatch(external, "short")
    rule = TEMPLATE["Rules"]["CallerRoleNeedsAnExternalId"]
    assert rule["Assertions"][0]["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "CallerExternalId"}, ""]}]}


ROUTE_CALLS = {  # (method, path) -> the sets that may call it
    ("POST", "/connect-sessions"): {"connect", "admin"},
    ("POST", "/connect-sessions/s/complete"): {"connect", "admin"},
    ("PUT", "/connections/u/api-key"): {"connect", "admin"},
    ("GET", "/connections/u"): {"connect", "admin"},
    ("GET", "/connections/u/token"): {"token-only", "admin"},
    ("POST", "/connections/u/refresh"): {"admin"},
    ("DELETE", "/connections/u"): {"admin"},
    ("GET", "/connections/u/proxy/Contacts"): {"admin"},
    ("GET", "/connections/u/proxy/Users/token"): {"admin"},  # ends in /token: still the proxy
    ("POST", "/connections/u/proxy/Contacts"): {"admin"},
}


@pytest.mark.parametrize("name", sorted(SET_POLICIES))
def test_each_permission_set_grants_exactly_its_routes(name):
    document = permission_set(name)
    for (method, path), sets in ROUTE_CALLS.items():
        assert invoke_allowed(document, method, path) == (name in sets), (name, method, path)
    for statement in statements(document):
        assert statement["Action"] == "execute-api:Invoke"
        assert all(r.startswith(API_ARN + "/") for r in as_list(statement["Resource"]))  # this API only


# Which sets may call each IAM route of the template (by its route key).
ROUTE_SETS = {
    "POST /connect-sessions": {"connect", "admin"},
    "POST /connect-sessions/{session_id}/complete": {"connect", "admin"},
    "PUT /connections/{connection_id}/api-key": {"connect", "admin"},
    "GET /connections/{connection_id}": {"connect", "admin"},
    "GET /connections": {"connect", "admin"},
    "GET /connections/{connection_id}/token": {"token-only", "admin"},
    "POST /connections/{connection_id}/refresh": {"admin"},
    "PATCH /connections/{connection_id}": {"admin"},
    "DELETE /connections/{connection_id}": {"admin"},
    "ANY /connections/{connection_id}/proxy/{path+}": {"admin"},
}
# Values a caller may put in each path parameter: a proxied path may end like any other
# route's path ("*" in an execute-api ARN spans "/", so PUT/connections/*/api-key also
# matches PUT /connections/u/proxy/x/api-key).
PARAMETER_VALUES = {
    "connection_id": ["u", "u.v", "proxy"],
    "session_id": ["s"],
    "path+": ["Contacts", "Users/Me", "x/api-key", "x/token", "x/refresh", "x/complete", "x/proxy/y",
              "connections/u", "connect-sessions"],
}
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


def concrete_paths(template_path: str):
    names = re.findall(r"\{([a-z_]+\+?)\}", template_path)
    paths = [template_path]
    for name in names:
        paths = [p.replace("{" + name + "}", value) for p in paths for value in PARAMETER_VALUES[name]]
    return paths


@pytest.mark.parametrize("name", sorted(SET_POLICIES))
def test_each_permission_set_reaches_exactly_its_routes_whatever_the_path_parameters_hold(name):
    document = permission_set(name)
    routes = [r for r in Stack().http_routes() if r["auth"] == "AWS_IAM"]
    assert {f"{r['method']} {r['path']}" for r in routes} == set(ROUTE_SETS)
    wrong = []
    for route in routes:
        allowed = name in ROUTE_SETS[f"{route['method']} {route['path']}"]
        for method in (METHODS if route["method"] == "ANY" else (route["method"],)):
            for path in concrete_paths(route["path"]):
                if invoke_allowed(document, method, path) != allowed:
                    wrong.append(f"{method} {path}")
    assert wrong == []


def test_admin_covers_every_iam_route_of_the_template():
    document = permission_set("admin")
    for route in Stack().http_routes():
        if route["auth"] == "AWS_IAM":
            path = re.sub(r"\{[a-z_]+\+\}", "Users/Me", re.sub(r"\{[a-z_]+\}", "x", route["path"]))
            method = "GET" if route["method"] == "ANY" else route["method"]
            assert invoke_allowed(document, method, path), route

# -- webhooks ----------------------------------------------------------------------------------

WEBHOOK_RESOURCES = {"WebhookSecret", "WebhookRule", "WebhookQueue", "WebhookDeadLetterQueue", "WebhookQueuePolicy",
                     "WebhookFunction", "WebhookRole"}


def test_without_a_webhook_url_no_webhook_resource_exists():
    off, on = Stack(), Stack(parameters={"WebhookUrl": "https://hooks.example.com/in"})
    present = {k for k, v in RESOURCES.items() if off.condition(v.get("Condition"))}
    assert not present & WEBHOOK_RESOURCES
    assert {k for k, v in RESOURCES.items() if on.condition(v.get("Condition"))} >= WEBHOOK_RESOURCES


def test_the_webhook_url_must_be_https_and_carry_no_secret():
    # WebhookUrl lands in the function's environment: no query (where receivers put tokens),
    # no user info, no fragment (second security review, F9). Receivers verify the signature.
    pattern = TEMPLATE["Parameters"]["WebhookUrl"]["AllowedPattern"]
    for value in ("", "https://hooks.example.com/in", "https://h.example:8443/a/b"):
        assert re.fullmatch(pattern, value), value
    for value in ("http://hooks.example.com/in", "hooks.example.com", "https://", "ftp://x", "https://a b",
                  "https://faß.example/hook", "https://h.example/in?token=s3cret", "https://h.example/in?",
                  "https://user:pw@h.example/in", "https://h.example/in#s3cret"):
        assert not re.fullmatch(pattern, value), value


def test_webhook_retries_last_about_a_day_then_dead_letter_never_expire():
    from broker.background.webhooks import MAX_ATTEMPTS, RETRY_DELAYS

    queue = RESOURCES["WebhookQueue"]["Properties"]
    assert queue["RedrivePolicy"]["maxReceiveCount"] == MAX_ATTEMPTS
    assert 20 * 3600 <= sum(RETRY_DELAYS) <= 24 * 3600 < queue["MessageRetentionPeriod"]
    assert max(RETRY_DELAYS) <= 12 * 3600  # SQS's largest visibility timeout
    assert queue["VisibilityTimeout"] >= 6 * RESOURCES["WebhookFunction"]["Properties"]["Timeout"]
    [event] = RESOURCES["WebhookFunction"]["Properties"]["Events"].values()
    assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_the_webhook_role_reads_only_its_secret_and_queue():
    assert role_grants("WebhookRole") == {
        "WebhookQueue": {"sqs:receivemessage", "sqs:deletemessage", "sqs:changemessagevisibility",
                         "sqs:getqueueattributes"},
        '{"Ref": "WebhookSecret"}': {"secretsmanager:getsecretvalue"},
    }
    # only the stack's rule may send to the queue
    [statement] = RESOURCES["WebhookQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["WebhookRule", "Arn"]}}}


# -- operations: bounded, structured logs and one scheduled run at a time (issue 11, point 4) ----

CLOUDWATCH_RETENTION_DAYS = [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
                             2922, 3288, 3653]
LAMBDA_APPLICATION_LEVELS = {"TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"}


def test_every_function_logs_to_its_own_log_group_kept_log_retention_days():
    parameter = TEMPLATE["Parameters"]["LogRetentionDays"]
    assert parameter["Default"] == 30 and parameter["AllowedValues"] == CLOUDWATCH_RETENTION_DAYS
    groups = {k for k, v in RESOURCES.items() if v["Type"] == "AWS::Logs::LogGroup"}
    used = set()
    for logical, function in FUNCTIONS.items():
        group = function["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        assert group in groups and group not in used, logical
        used.add(group)
        props = RESOURCES[group]["Properties"]
        assert props["RetentionInDays"] == {"Ref": "LogRetentionDays"}, group
        assert props["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/${{AWS::StackName}}-{logical}"}
        assert RESOURCES[group].get("Condition") == function.get("Condition"), group  # exists when its function does
    assert groups - used == {"ApiAccessLogGroup"}


@pytest.mark.parametrize("level", TEMPLATE["Parameters"]["LogLevel"]["AllowedValues"])
def test_lambdas_json_logs_keep_powertools_at_the_log_level_parameter(level, monkeypatch):
    import io
    import logging
    import warnings

    from aws_lambda_powertools import Logger

    stack = Stack(parameters={"LogLevel": level})
    config = stack.resolve(TEMPLATE["Globals"]["Function"]["LoggingConfig"])
    assert config["LogFormat"] == "JSON" and config["SystemLogLevel"] == "WARN"
    assert config["ApplicationLogLevel"] in LAMBDA_APPLICATION_LEVELS
    # What Lambda sets from LoggingConfig, beside the template's own variables.
    environment = stack.function_environment("SchedulerFunction")
    assert environment["POWERTOOLS_LOG_LEVEL"] == level
    for name, value in {"AWS_LAMBDA_LOG_LEVEL": config["ApplicationLogLevel"], "AWS_LAMBDA_LOG_FORMAT": "JSON",
                        "POWERTOOLS_LOG_LEVEL": level}.items():
        monkeypatch.setenv(name, value)
    stream = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Powertools warns when its level and Lambda's disagree
        logger = Logger(service=f"log-level-{level.lower()}", logger_handler=logging.StreamHandler(stream))
    assert logging.getLevelName(logger.log_level) == level
    logger.critical("still JSON", extra={"connection_id": "user-1"})
    line = json.loads(stream.getvalue())
    assert line["level"] == "CRITICAL" and line["message"] == "still JSON" and line["connection_id"] == "user-1"


def test_the_scheduler_may_write_its_run_lease_and_no_other_flow_item():
    from broker.connect.flowstore import SCHEDULED_RUN_KEY

    statements = RESOURCES["SchedulerRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    [put] = [s for s in statements if "dynamodb:PutItem" in as_list(s["Action"])]
    assert put["Resource"] == {"Fn::GetAtt": ["FlowTable", "Arn"]} and as_list(put["Action"]) == ["dynamodb:PutItem"]
    assert put["Condition"] == {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [SCHEDULED_RUN_KEY]}}
    # The lease is what keeps runs apart: the schedule still fires every 5 minutes with a 300 s timeout.
    assert "ReservedConcurrentExecutions" not in RESOURCES["SchedulerFunction"]["Properties"]


# docs/upgrades.md: what `sam deploy` (a replacement) and a deleted stack keep. The key must
# outlive the table, or the retained ciphertexts are lost; stored refresh tokens are bound to
# the client id in the client secret.
@pytest.mark.parametrize("logical", ["ConnectionsTable", "TokenKey", "ClientSecret"])
def test_the_data_an_upgrade_must_keep_is_retained(logical):
    resource = RESOURCES[logical]
    assert resource["DeletionPolicy"] == resource["UpdateReplacePolicy"] == "Retain"


def test_the_connections_table_cannot_be_deleted_by_hand_by_mistake():
    assert RESOURCES["ConnectionsTable"]["Properties"]["DeletionProtectionEnabled"] is True


def test_the_webhook_functions_scanner_suppressions_say_what_is_so():
    # Second security review, F9: it reaches the SaaS's webhook URL, not only AWS and
    # Insightly; and its environment holds no secret only because WebhookUrl may hold none.
    text = (Path(__file__).resolve().parents[1] / "template.yaml").read_text()
    block = text[text.index("  WebhookFunction:"):text.index("    Properties:", text.index("  WebhookFunction:"))]
    reasons = dict(re.findall(r"checkov:skip=(CKV_AWS_\d+):(.*)", block))
    assert "webhook URL" in reasons["CKV_AWS_117"] and "only public AWS endpoints and Insightly" not in reasons[
        "CKV_AWS_117"]
    assert "WebhookUrl" in reasons["CKV_AWS_173"] and "no query" in reasons["CKV_AWS_173"]
