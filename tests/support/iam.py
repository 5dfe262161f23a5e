"""What a function's role allows, checked against the AWS calls its code really made.

moto does not enforce IAM, so a call the role does not grant passes every in-process test
and fails only in AWS (AccessDenied). `recorded_calls` captures the DynamoDB calls of a
piece of code; `not_granted` evaluates them against the role's statements in template.yaml:
action, table or index resource, and the condition keys the template uses
(dynamodb:LeadingKeys, dynamodb:Attributes, dynamodb:Select). An unknown condition key
fails the check rather than being assumed to pass. An UpdateItem's dynamodb:Attributes are the
key and every attribute its update and condition expressions name."""

from __future__ import annotations

import contextlib
import re
from typing import Any

ITEM_OPERATIONS = {"GetItem", "PutItem", "UpdateItem", "DeleteItem"}


@contextlib.contextmanager
def recorded_calls(client):
    """Every call made through this botocore client (clients are shared by the broker)."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def record(model, params, **kwargs):
        calls.append((model.name, params))

    client.meta.events.register("before-parameter-build", record)
    try:
        yield calls
    finally:
        client.meta.events.unregister("before-parameter-build", record)


def _resource_of(resource: Any) -> str:
    """A statement's resource as `Table` or `Table/index/name` (template logical ids)."""
    if isinstance(resource, dict) and "Fn::GetAtt" in resource:
        return resource["Fn::GetAtt"][0]
    if isinstance(resource, dict) and "Fn::Sub" in resource:
        match = re.fullmatch(r"\$\{(\w+)\.Arn\}(/index/[\w-]+)?", resource["Fn::Sub"])
        if match:
            return match.group(1) + (match.group(2) or "")
    return repr(resource)


def _per_table(calls):
    """A BatchGetItem is one request per table (each checked against its own resource)."""
    for operation, params in calls:
        if operation == "BatchGetItem":
            for table, request in params["RequestItems"].items():
                yield operation, {"TableName": table, **request}
        else:
            yield operation, params


def _partition_value(key: dict[str, Any]) -> str:
    [value] = [v for k, v in key.items() if k in ("flow_key", "connection_id")]
    return next(iter(value.values()))


_EXPRESSION_WORDS = {"SET", "REMOVE", "ADD", "DELETE", "AND", "OR", "NOT", "BETWEEN", "IN"}


def _expression_attributes(params: dict[str, Any]) -> set[str]:
    """The top-level attribute names an UpdateItem's update and condition expressions name
    (what DynamoDB puts in dynamodb:Attributes for a write: read, written or compared)."""
    names = params.get("ExpressionAttributeNames", {})
    found = set()
    for expression in (params.get("UpdateExpression", ""), params.get("ConditionExpression", "")):
        for token in re.findall(r"[#:]?[A-Za-z_][A-Za-z0-9_]*(?:\s*\()?", expression):
            if token.startswith(":") or token.endswith("(") or token in _EXPRESSION_WORDS:
                continue  # a value, a function, a keyword
            found.add(names.get(token, token))
    return found


def _context(operation: str, params: dict[str, Any]) -> dict[str, Any]:
    context: dict[str, Any] = {}
    key = params.get("Key") or params.get("Item")
    if operation in ITEM_OPERATIONS and key:
        context["dynamodb:LeadingKeys"] = [_partition_value(key)]
    if operation == "UpdateItem":
        context["dynamodb:Attributes"] = sorted(set(params["Key"]) | _expression_attributes(params))
    if operation == "BatchGetItem":
        context["dynamodb:LeadingKeys"] = [_partition_value(k) for k in params["Keys"]]
    projection = params.get("ProjectionExpression")
    if projection:
        names = params.get("ExpressionAttributeNames", {})
        context["dynamodb:Attributes"] = [names.get(a.strip(), a.strip()) for a in projection.split(",")]
        context["dynamodb:Select"] = "SPECIFIC_ATTRIBUTES"
    elif operation in ("GetItem", "Query", "BatchGetItem"):
        context["dynamodb:Select"] = "ALL_ATTRIBUTES"
    return context


def _conditions_hold(conditions: dict[str, Any], context: dict[str, Any]) -> bool:
    for operator, keys in conditions.items():
        for key, allowed in keys.items():
            allowed = allowed if isinstance(allowed, list) else [allowed]
            if operator == "ForAllValues:StringEquals":
                if key not in context or not set(context[key]) <= set(allowed):
                    return False
            elif operator == "StringEqualsIfExists":
                if key in context and context[key] not in allowed:
                    return False
            else:
                return False  # not understood here: never assumed to pass
    return True


def not_granted(stack, role_logical: str, calls) -> list[str]:
    """The calls (as `Operation Resource context`) no Allow statement of the stack's role grants."""
    role = stack.resources[role_logical]
    table_logical = {stack.refs[logical]: logical for logical in stack.of_type("AWS::DynamoDB::Table")}
    statements = [s for policy in role["Properties"].get("Policies", [])
                  for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
    missing = []
    for operation, params in _per_table(calls):
        resource = table_logical[params["TableName"]] + (f"/index/{params['IndexName']}"
                                                        if params.get("IndexName") else "")
        action, context = f"dynamodb:{operation}", _context(operation, params)
        if not any(action in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
                   and resource in [_resource_of(r) for r in (s["Resource"] if isinstance(s["Resource"], list)
                                                              else [s["Resource"]])]
                   and _conditions_hold(s.get("Condition", {}), context) for s in statements):
            missing.append(f"{operation} {resource} {context}")
    return missing
