"""The alarms and the dashboard watch metrics the code really emits (issue 11, point 3).

What the code emits is read from the code itself: every metric name passed to `count(...)`,
`metrics.add_metric(name=...)` or built as a `(name, unit, value)` tuple in the broker
package (ast, resolving module constants), and the namespace and dimensions from an EMF line
the package prints under a function's template environment. A renamed metric, namespace or
service therefore fails here instead of leaving an alarm that never fires."""

from __future__ import annotations

import ast
import contextlib
import json
import re
import subprocess
import sys

import pytest

from local.stack import ROOT, Stack, load_template

TEMPLATE = load_template()
RESOURCES = TEMPLATE["Resources"]
ALARMS = {k: v for k, v in RESOURCES.items() if v["Type"] == "AWS::CloudWatch::Alarm"}
CODE = [ROOT / "layers" / "common" / "broker", ROOT / "functions"]
UNITS = {"Count", "Milliseconds", "Seconds", "Percent", "Bytes"}
# AWS's own metrics the template may use, and the dimensions each namespace is read by.
AWS_METRICS = {
    "AWS/SQS": ({"ApproximateNumberOfMessagesVisible"}, {"QueueName"}),
    "AWS/Lambda": ({"Errors", "Throttles", "Duration", "Invocations"}, {"FunctionName"}),
    "AWS/ApiGateway": ({"Count", "4xx", "5xx", "Latency", "IntegrationLatency"}, {"ApiId", "Stage"}),
}


# -- what the code emits ---------------------------------------------------------------------

def _module_constants(tree: ast.Module) -> dict[str, object]:
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            with contextlib.suppress(ValueError):
                constants[node.targets[0].id] = ast.literal_eval(node.value)
    return constants


def _names(node: ast.AST, constants: dict[str, object]) -> set[str] | None:
    """The metric names an expression can take; None when it is not knowable statically."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.Name) and isinstance(constants.get(node.id), str):
        return {constants[node.id]}
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and isinstance(
            constants.get(node.value.id), dict):
        return set(constants[node.value.id].values())
    if isinstance(node, ast.IfExp):
        body, orelse = _names(node.body, constants), _names(node.orelse, constants)
        return None if body is None or orelse is None else body | orelse
    return None


def emitted_metric_names() -> tuple[set[str], list[str]]:
    """(names the code emits, source locations of names it builds at run time)."""
    names, dynamic = set(), []
    for path in sorted(p for root in CODE for p in root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        constants = _module_constants(tree)
        for node in ast.walk(tree):
            found: list[ast.AST] = []
            if isinstance(node, ast.Call):
                callee = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                if callee == "count" and node.args:
                    found.append(node.args[0])
                elif callee == "add_metric":
                    found += [k.value for k in node.keywords if k.arg == "name"] + node.args[:1]
            elif (isinstance(node, ast.Tuple) and len(node.elts) == 3 and isinstance(node.elts[1], ast.Constant)
                  and node.elts[1].value in UNITS):
                found.append(node.elts[0])  # (name, unit, value), as proxy.metric_values returns
            for expr in found:
                resolved = _names(expr, constants)
                if resolved is None:
                    dynamic.append(f"{path.relative_to(ROOT)}:{expr.lineno}")
                else:
                    names |= resolved
    return names, dynamic


EMITTED, DYNAMIC = emitted_metric_names()


@pytest.fixture(scope="module")
def emf_line() -> dict:
    """One EMF blob the broker package prints with a function's template environment."""
    env = Stack().function_environment("RefreshWorkerFunction")
    script = ("from broker.platform.observability import count, metrics\n"
              "count('RefreshNotStored')\nmetrics.flush_metrics()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True,
                          env={"PATH": "", "PYTHONPATH": str(ROOT / "layers" / "common"),
                               "AWS_DEFAULT_REGION": "us-east-1",
                               **{k: v for k, v in env.items() if k.startswith("POWERTOOLS_")}})
    [line] = [json.loads(x) for x in done.stdout.splitlines() if '"_aws"' in x]
    return line


def test_the_static_reading_finds_what_the_code_really_prints(emf_line):
    [directive] = emf_line["_aws"]["CloudWatchMetrics"]
    assert {m["Name"] for m in directive["Metrics"]} <= EMITTED
    # The proxy's names come through (name, unit, value) tuples, the rest through count().
    assert {"ProxyLocal429", "ProxyProvider429", "ProxyStatus5xx", "RefreshNotStored", "ClientRejected"} <= EMITTED
    # Names passed on (count() itself, the proxy's loop over its tuples) and the worker's
    # per-outcome counters, built at run time, are the only ones not read: no alarm uses those.
    assert {location.split(":")[0] for location in DYNAMIC} <= {
        "layers/common/broker/platform/observability.py", "layers/common/broker/proxy/call.py",
        "layers/common/broker/background/worker.py"}, DYNAMIC


# -- what the template watches ---------------------------------------------------------------

def _placeholder(match: re.Match) -> str:
    return "@{" + match.group(1) + "}"


def dashboard_metrics() -> list[tuple[str, str, dict[str, object]]]:
    body = RESOURCES["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    widgets = json.loads(re.sub(r"\$\{([^}]+)\}", _placeholder, body))["widgets"]
    found = []
    for widget in widgets:
        for row in widget.get("properties", {}).get("metrics", []):
            parts = [p for p in row if not isinstance(p, dict)]
            assert "." not in parts, "write dashboard metrics out in full (no '.' shorthand): the test reads them"
            namespace, name, *pairs = parts
            found.append((namespace, name, dict(zip(pairs[::2], pairs[1::2], strict=True))))
    return found


def alarm_metrics() -> list[tuple[str, str, str, dict[str, object]]]:
    found = []
    for logical, alarm in ALARMS.items():
        props = alarm["Properties"]
        stats = [q["MetricStat"]["Metric"] for q in props.get("Metrics", []) if "MetricStat" in q]
        if "MetricName" in props:
            stats.append(props)
        assert stats, logical
        for metric in stats:
            found.append((logical, metric["Namespace"], metric["MetricName"],
                          {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}))
    return found


WATCHED = [(f"alarm {a}", ns, name, dims) for a, ns, name, dims in alarm_metrics()] + [
    ("dashboard", ns, name, dims) for ns, name, dims in dashboard_metrics()]


def _resource_of(value) -> tuple[str, str | None]:
    """(logical id, attribute) a dimension value refers to: Ref/GetAtt, or a Sub placeholder."""
    if isinstance(value, dict) and "Ref" in value:
        return value["Ref"], None
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        logical, attr = value["Fn::GetAtt"]
        return logical, attr
    match = re.fullmatch(r"@\{([A-Za-z0-9]+)(?:\.([A-Za-z]+))?\}", str(value))
    assert match, f"{value!r} names no resource of the template"
    return match.group(1), match.group(2)


@pytest.mark.parametrize("where,namespace,name,dimensions", WATCHED,
                         ids=[f"{w}:{n}:{m}" for w, n, m, _ in WATCHED])
def test_every_watched_metric_is_one_the_stack_emits(where, namespace, name, dimensions, emf_line):
    if namespace.startswith("AWS/"):
        names, keys = AWS_METRICS[namespace]
        assert name in names and set(dimensions) <= keys and dimensions, (where, name)
        for key, value in dimensions.items():
            if key == "Stage":
                assert value == "$default", where  # the HTTP API's only stage
                continue
            logical, attr = _resource_of(value)
            expected = {"QueueName": ("AWS::SQS::Queue", "QueueName"),
                        "FunctionName": ("AWS::Serverless::Function", None),
                        "ApiId": ("AWS::Serverless::HttpApi", None)}[key]
            assert (RESOURCES[logical]["Type"], attr) == expected, (where, key, value)
        return
    [directive] = emf_line["_aws"]["CloudWatchMetrics"]
    assert namespace == directive["Namespace"], where
    assert name in EMITTED, f"{where}: no code emits {name!r} (renamed?)"
    [emitted_dimensions] = directive["Dimensions"]
    assert dimensions == {key: emf_line[key] for key in emitted_dimensions}, where


def test_the_issues_alarms_are_all_there_and_notify_the_topic():
    watched = {(ns, name) for _, ns, name, _ in alarm_metrics()}
    assert {("InsightlyConnect", n) for n in ("RefreshNotStored", "ClientRejected", "NeedsReauth", "ProxyLocal429",
                                               "ProxyProvider429")} <= watched
    assert {("AWS/Lambda", "Errors"), ("AWS/ApiGateway", "5xx"),
            ("AWS/SQS", "ApproximateNumberOfMessagesVisible")} <= watched
    queues = {_resource_of(dims["QueueName"])[0] for _, ns, _, dims in alarm_metrics() if ns == "AWS/SQS"}
    functions = {_resource_of(dims["FunctionName"])[0] for _, ns, _, dims in alarm_metrics() if ns == "AWS/Lambda"}
    assert queues == {"RefreshDeadLetterQueue", "SchedulerFailureQueue"}
    assert functions == {"RefreshWorkerFunction", "SchedulerFunction"}
    topic = {"Fn::If": ["CreateAlarmTopic", {"Ref": "AlarmTopic"}, {"Ref": "AlarmTopicArn"}]}
    for alarm in ALARMS.values():
        assert alarm["Properties"]["AlarmActions"] == [topic] and alarm["Properties"]["OKActions"] == [topic]


def test_every_alarm_says_what_to_do_in_a_runbook_section_that_exists():
    runbook = (ROOT / "docs" / "operations.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", runbook, re.MULTILINE)}
    for logical, alarm in ALARMS.items():
        description = alarm["Properties"]["AlarmDescription"]
        assert len(description) <= 1024, logical  # CloudWatch's limit
        [anchor] = re.findall(r"docs/operations\.md#([a-z0-9-]+)", description)
        assert anchor in anchors, (logical, anchor)
        assert logical in runbook, f"{logical} is not in docs/operations.md"


def test_the_alarm_topic_is_the_stacks_own_or_the_given_one():
    own, given = Stack(), Stack(parameters={"AlarmTopicArn": "arn:aws:sns:us-east-1:123456789012:on-call",
                                            "AlarmEmail": "ops@example.com"})
    assert {"AlarmTopic", "AlarmTopicKey", "AlarmTopicPolicy"} <= {
        k for k, v in RESOURCES.items() if own.condition(v.get("Condition"))}
    assert not {"AlarmTopic", "AlarmTopicKey", "AlarmTopicPolicy"} & {
        k for k, v in RESOURCES.items() if given.condition(v.get("Condition"))}
    assert given.resolve(RESOURCES["AlarmEmailSubscription"]["Properties"])["TopicArn"] == (
        "arn:aws:sns:us-east-1:123456789012:on-call")
    assert not own.condition(RESOURCES["AlarmEmailSubscription"]["Condition"])  # no AlarmEmail: nobody
    # CloudWatch, of this account only, may publish and use the topic's key; nothing else may.
    [publish] = RESOURCES["AlarmTopicPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert publish["Principal"] == {"Service": "cloudwatch.amazonaws.com"} and publish["Action"] == "sns:Publish"
    assert publish["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    key_users = [s for s in RESOURCES["AlarmTopicKey"]["Properties"]["KeyPolicy"]["Statement"]
                 if "Service" in s["Principal"]]
    assert [s["Principal"]["Service"] for s in key_users] == ["cloudwatch.amazonaws.com"]
    assert key_users[0]["Condition"] == publish["Condition"]
    assert RESOURCES["AlarmTopic"]["Properties"]["KmsMasterKeyId"] == {"Ref": "AlarmTopicKey"}


def test_a_renamed_metric_is_caught(tmp_path, monkeypatch):
    """The checker itself: a copy of the code with RefreshNotStored renamed no longer emits it."""
    source = (ROOT / "layers" / "common" / "broker" / "credentials" / "stored.py").read_text()
    assert 'count("RefreshNotStored")' in source
    (tmp_path / "stored.py").write_text(source.replace('count("RefreshNotStored")', 'count("RefreshNotSaved")'))
    monkeypatch.setattr(sys.modules[__name__], "CODE", [tmp_path])
    names, _ = emitted_metric_names()
    assert "RefreshNotSaved" in names and "RefreshNotStored" not in names
