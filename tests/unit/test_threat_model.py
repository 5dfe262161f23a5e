"""docs/threat-model.md cites tests as proof of its mitigations and has a section per route.
A renamed or deleted test, or a route added without its threats, fails here, so the document
cannot rot into claims nothing checks."""

import ast
import re
from pathlib import Path

import pytest

from local.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "threat-model.md"
# tests/<path>.py::test_name, optionally ::Class::test_name and a parametrize id in brackets.
CITATION = re.compile(r"(tests/[\w/]+\.py)::((?:\w+::)*\w+)(?:\[[^\]\s]*\])?")
ROUTE_HEADING = re.compile(r"^### `([A-Z]+) (/\S*)`$", re.MULTILINE)


def citations(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in CITATION.finditer(text)]


def defined_tests(path: Path) -> set[str]:
    """Every test function of a file, top level or in a class (Class::name and name)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(f"{node.name}::{item.name}")
    return names


def missing_citations(text: str, root: Path = ROOT) -> list[str]:
    missing = []
    for file, name in citations(text):
        path = root / file
        if not path.is_file():
            missing.append(f"{file}::{name} (no such file)")
        elif not name.rpartition("::")[2].startswith("test") or name not in defined_tests(path):
            missing.append(f"{file}::{name} (no such test)")
    return missing


def test_every_cited_test_exists():
    text = DOCUMENT.read_text()
    assert len(citations(text)) > 50, "the threat model should cite its proofs"
    assert missing_citations(text) == []


def test_every_route_of_the_template_has_its_section_and_every_section_is_a_route():
    template_routes = {(r["method"], r["path"]) for r in Stack().http_routes()}
    document_routes = set(ROUTE_HEADING.findall(DOCUMENT.read_text()))
    assert document_routes == template_routes


@pytest.mark.parametrize("citation", [
    "tests/integration/test_tokens.py::test_a_made_up_name_that_proves_nothing",
    "tests/integration/test_no_such_file.py::test_an_unknown_connection_is_a_404",
    "tests/integration/test_tokens.py::TestNoSuchClass::test_an_unknown_connection_is_a_404",
    "tests/support/openapi.py::load_document",  # a helper is not a test
])
def test_a_made_up_citation_is_reported(citation):
    assert missing_citations(f"proved by `{citation}`") != []


def test_a_parametrized_id_is_stripped_and_the_test_found():
    text = "`tests/integration/test_connect_flow.py::test_a_bad_authorize_request_is_refused_and_writes_nothing[x-y]`"
    assert citations(text) == [("tests/integration/test_connect_flow.py",
                                "test_a_bad_authorize_request_is_refused_and_writes_nothing")]
    assert missing_citations(text) == []
