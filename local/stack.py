"""template.yaml as the single source of truth for everything the tests create.

Loads the template with a loader that understands CloudFormation tags, resolves the
intrinsic functions the template uses, creates its tables, key, alias and secret against
whatever AWS endpoint boto3 is pointed at (moto in-process or moto server), and answers
what a function's environment and routes are.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import secrets
import string
from pathlib import Path
from typing import Any

from cfn_flip import load_yaml

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "template.yaml"
ACCOUNT_ID = "123456789012"  # moto's default account


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template, parsed once per version of the file (the YAML parser is pure Python: about
    half a second a parse, and most tests build a stack); a copy each time, free to change."""
    stat = path.stat()
    return copy.deepcopy(_parsed(path, stat.st_mtime_ns, stat.st_size))


@functools.cache
def _parsed(path: Path, mtime_ns: int, size: int) -> dict[str, Any]:
    return load_yaml(path.read_text())


def parameter_env_name(parameter: str) -> str:
    """ProviderAuthorizeUrl -> PROVIDER_AUTHORIZE_URL."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", parameter).upper()


def _generated(props: dict[str, Any]) -> str:
    """What CloudFormation makes of GenerateSecretString (the options the template uses)."""
    spec = props["GenerateSecretString"]
    alphabet = string.ascii_letters + string.digits + ("" if spec.get("ExcludePunctuation") else string.punctuation)
    generated = "".join(secrets.choice(alphabet) for _ in range(spec.get("PasswordLength", 32)))
    if "GenerateStringKey" not in spec:
        return generated  # a plain random string, as CloudFormation makes without a template
    value = json.loads(spec.get("SecretStringTemplate", "{}"))
    value[spec["GenerateStringKey"]] = generated
    return json.dumps(value)


@functools.cache
def aws_session():
    """One boto3 session for the process: a new session reads every service's model again
    (most of a second on a busy machine), and each test's stack is made through one. Its
    clients are made per call, so they reach whatever mock_aws() or endpoint is current."""
    import boto3  # here: most importers of this module never create anything

    return boto3.Session()


class Stack:
    def __init__(self, *, name: str = "insightly-connect", region: str = "us-east-1",
                 parameters: dict[str, str] | None = None, template: dict[str, Any] | None = None):
        self.template = template or load_template()
        self.name = name
        self.region = region
        self.parameters = {k: str(v.get("Default", "")) for k, v in self.template.get("Parameters", {}).items()}
        unknown = set(parameters or {}) - set(self.parameters)
        if unknown:
            raise KeyError(f"not template parameters: {sorted(unknown)}")
        self.parameters.update(parameters or {})
        self.pseudo = {"AWS::Region": region, "AWS::AccountId": ACCOUNT_ID, "AWS::Partition": "aws",
                       "AWS::StackName": name, "AWS::URLSuffix": "amazonaws.com"}
        self.refs: dict[str, str] = {}
        self.attrs: dict[tuple[str, str], str] = {}

    # -- reading ---------------------------------------------------------------------------

    @property
    def resources(self) -> dict[str, Any]:
        return self.template["Resources"]

    def of_type(self, type_: str) -> dict[str, Any]:
        return {k: v for k, v in self.resources.items()
                if v["Type"] == type_ and self.condition(v.get("Condition"))}

    def condition(self, name: str | None) -> bool:
        if name is None:
            return True
        return bool(self.resolve(self.template["Conditions"][name]))

    def resolve(self, node: Any) -> Any:
        """Evaluate the intrinsic functions the template uses, against this stack."""
        if isinstance(node, list):
            return [self.resolve(n) for n in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                return self._ref(arg)
            if key == "Fn::GetAtt":
                logical, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                return self._getatt(logical, attr)
            if key == "Fn::Sub":
                text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))
                return re.sub(r"\$\{([^}!]+)\}", lambda m: str(self._sub_var(m.group(1), extra)), text)
            if key == "Fn::If":
                name, yes, no = arg
                return self.resolve(yes if self.condition(name) else no)
            if key == "Fn::Equals":
                a, b = self.resolve(arg)
                return str(a) == str(b)
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Fn::And":
                return all(self.resolve(a) for a in arg)
            if key == "Fn::Or":
                return any(self.resolve(a) for a in arg)
            if key == "Fn::Join":
                sep, items = arg
                return sep.join(str(i) for i in self.resolve(items))
            if key == "Fn::Split":
                sep, text = arg
                return str(self.resolve(text)).split(sep)
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::FindInMap":
                mapping, top, second = self.resolve(arg)
                return self.template["Mappings"][mapping][top][second]
        return {k: self.resolve(v) for k, v in node.items()}

    def _sub_var(self, name: str, extra: dict[str, Any]) -> Any:
        if name in extra:
            return extra[name]
        if "." in name and name.split(".", 1)[0] in self.resources:
            return self._getatt(*name.split(".", 1))
        return self._ref(name)

    def _ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            if self.template["Parameters"][name]["Type"] == "CommaDelimitedList":  # a list, as in CloudFormation
                return self.parameters[name].split(",")
            return self.parameters[name]
        if name in self.refs:
            return self.refs[name]
        if name in self.resources:  # not created here (roles, functions, API): a stable stand-in
            return f"{self.name}-{name}"
        raise KeyError(f"unknown Ref {name}")

    def _getatt(self, logical: str, attr: str) -> Any:
        if (logical, attr) in self.attrs:
            return self.attrs[(logical, attr)]
        type_ = self.resources[logical]["Type"]
        if type_ == "AWS::IAM::Role" and attr == "Arn":
            return f"arn:aws:iam::{ACCOUNT_ID}:role/{self.name}-{logical}"
        if attr == "Arn":  # a resource not created (yet): a recognisable stand-in
            return f"arn:aws:unprovisioned:{self.region}:{ACCOUNT_ID}:{self.name}-{logical}"
        raise KeyError(f"no attribute {logical}.{attr} in this stack")

    def function_environment(self, logical: str) -> dict[str, str]:
        """The environment variables the template gives one function (Globals merged in)."""
        global_env = self.template.get("Globals", {}).get("Function", {}).get("Environment", {})
        own_env = self.resources[logical]["Properties"].get("Environment", {})
        merged = {**global_env.get("Variables", {}), **own_env.get("Variables", {})}
        return {k: str(self.resolve(v)) for k, v in merged.items()}

    def http_routes(self) -> list[dict[str, str]]:
        """Every HttpApi event: method, path, function, and whether it is IAM-protected."""
        api = next(iter(self.of_type("AWS::Serverless::HttpApi").values()))
        default_auth = api["Properties"].get("Auth", {}).get("DefaultAuthorizer", "NONE")
        routes = []
        for logical, resource in self.of_type("AWS::Serverless::Function").items():
            for event in resource["Properties"].get("Events", {}).values():
                if event["Type"] != "HttpApi":
                    continue
                props = event["Properties"]
                auth = props.get("Auth", {}).get("Authorizer", default_auth)
                routes.append({"method": props["Method"].upper(), "path": props["Path"],
                               "function": logical, "auth": auth,
                               "code_uri": resource["Properties"]["CodeUri"]})
        return routes

    # -- creating --------------------------------------------------------------------------

    def provision(self, session) -> Stack:
        """Create the template's stateful resources (tables, secrets, queues, event buses,
        keys, aliases) through a boto3 session."""
        for logical, res in self.of_type("AWS::DynamoDB::Table").items():
            self._create_table(session.client("dynamodb"), logical, self.resolve(res["Properties"]))
        for logical, res in self.of_type("AWS::SecretsManager::Secret").items():
            props = self.resolve(res["Properties"])
            answer = session.client("secretsmanager").create_secret(
                Name=f"{self.name}-{logical}", SecretString=props.get("SecretString") or _generated(props),
                Description=props.get("Description", ""))
            self.refs[logical] = answer["ARN"]
        self._create_queues(session)
        for logical, res in self.of_type("AWS::Events::EventBus").items():
            props = self.resolve(res["Properties"])
            arn = session.client("events").create_event_bus(Name=props["Name"])["EventBusArn"]
            self.refs[logical], self.attrs[(logical, "Arn")] = props["Name"], arn
        for logical, res in self.of_type("AWS::KMS::Key").items():
            kms = session.client("kms")
            props = self.resolve(res["Properties"])
            key = kms.create_key(Description=props.get("Description", ""), KeyUsage=props["KeyUsage"],
                                 KeySpec=props["KeySpec"], Policy=json.dumps(props["KeyPolicy"]))["KeyMetadata"]
            if props.get("EnableKeyRotation"):
                kms.enable_key_rotation(KeyId=key["KeyId"])
            self.refs[logical], self.attrs[(logical, "Arn")] = key["KeyId"], key["Arn"]
        for logical, res in self.of_type("AWS::KMS::Alias").items():
            props = self.resolve(res["Properties"])
            session.client("kms").create_alias(AliasName=props["AliasName"], TargetKeyId=props["TargetKeyId"])
            self.refs[logical] = props["AliasName"]
        return self

    def _create_queues(self, session) -> None:
        queues = self.of_type("AWS::SQS::Queue")
        if not queues:
            return
        sqs = session.client("sqs")
        for logical, res in queues.items():  # first all queues, then redrive (it names other queues)
            props = self.resolve({k: v for k, v in res.get("Properties", {}).items() if k != "RedrivePolicy"})
            name = props.get("QueueName") or f"{self.name}-{logical}"
            attributes = {k: str(props[k]) for k in ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds",
                                                     "ReceiveMessageWaitTimeSeconds") if k in props}
            url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            self.refs[logical] = url
            self.attrs.update({(logical, "Arn"): arn, (logical, "QueueName"): name, (logical, "QueueUrl"): url})
        for logical, res in queues.items():
            redrive = res.get("Properties", {}).get("RedrivePolicy")
            if redrive:
                sqs.set_queue_attributes(QueueUrl=self.refs[logical],
                                         Attributes={"RedrivePolicy": json.dumps(self.resolve(redrive))})

    def _create_table(self, dynamodb, logical: str, props: dict[str, Any]) -> None:
        name = f"{self.name}-{logical}"
        kwargs = {k: props[k] for k in ("AttributeDefinitions", "KeySchema", "BillingMode",
                                         "GlobalSecondaryIndexes") if k in props}
        table = dynamodb.create_table(TableName=name, **kwargs)["TableDescription"]
        ttl = props.get("TimeToLiveSpecification")
        if ttl:
            dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
        self.refs[logical], self.attrs[(logical, "Arn")] = name, table["TableArn"]
