"""Item schema versions: every item the broker writes carries `schema_version`.

Version 1 is the format every deployed stack has written so far; items written before the
attribute existed carry none and are version 1. A reader accepts every version up to
SCHEMA_VERSION and refuses a newer one (a stack rolled back below the code that wrote it)
with NewerSchemaVersion, before anything is written: the item stays as it is for the newer
code to read once it is deployed again. Writes to existing items are conditional on
`NOT_NEWER`, so even a write that did not read first leaves a newer item alone.

A change of format bumps SCHEMA_VERSION, and its readers keep accepting the version before
it (see docs/upgrades.md, "Item schema versions").
"""

from __future__ import annotations

from typing import Any

from broker.platform.errors import NewerSchemaVersion

SCHEMA_VERSION = 1
ATTRIBUTE = "schema_version"
# DynamoDB condition: the item was written by this version of the format or an older one.
NOT_NEWER = "(attribute_not_exists(schema_version) OR schema_version <= :schema_version)"
NOT_NEWER_VALUES = {":schema_version": {"N": str(SCHEMA_VERSION)}}


def version_of(item: dict[str, Any]) -> int:
    """The schema version of a raw DynamoDB item (no attribute: version 1)."""
    raw = item.get(ATTRIBUTE)
    return int(raw["N"]) if raw else 1


def is_newer(item: dict[str, Any] | None) -> bool:
    return bool(item) and version_of(item) > SCHEMA_VERSION


def check(item: dict[str, Any], what: str) -> dict[str, Any]:
    """The item, if this code can read it; NewerSchemaVersion otherwise."""
    version = version_of(item)
    if version > SCHEMA_VERSION:
        raise NewerSchemaVersion(
            f"the {what} was stored by a newer version of the broker (item schema_version {version}; this "
            f"deployment reads up to {SCHEMA_VERSION}); it is left unchanged until that version is deployed again")
    return item
