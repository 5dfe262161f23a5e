"""The broker's parts import one way only, read from the source with `ast` (docs/architecture.md).

    platform  <  http  <  store  <  credentials  <  connect | proxy | background  <  services

A module may import its own part and the parts below it; connect, proxy and background are
peers and do not import one another. The handlers (functions/*/app.py) import only
broker.services (the wiring), broker.http (the HTTP shape) and broker.platform (the deadline
and the observability decorators). Lazy and TYPE_CHECKING imports count like any other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BROKER = ROOT / "layers" / "common" / "broker"
LAYERS = [{"platform"}, {"http"}, {"store"}, {"credentials"}, {"connect", "proxy", "background"}, {"services"}]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
HANDLER_IMPORTS = ("broker.services", "broker.http", "broker.platform")


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every broker import in a file, at any depth: `from broker.x
    import y` gives broker.x.y, `from broker import services` gives broker.services."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                found.append((node.lineno, "." * node.level + (node.module or "")))
            elif node.module == "broker" or (node.module or "").startswith("broker."):
                found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "broker"]
    return found


def part_of(module_path: Path, broker: Path) -> str:
    """The part a broker file belongs to: its first folder, or the module itself (services)."""
    return module_path.relative_to(broker).parts[0].removesuffix(".py")


def upward_imports(broker: Path) -> list[str]:
    """Every import of the package at `broker` that goes to a part it may not use."""
    wrong = []
    for path in sorted(broker.rglob("*.py")):
        if path.parent == broker and path.name == "__init__.py":
            continue
        own = part_of(path, broker)
        for line, name in imported(path):
            where = f"{path.relative_to(broker.parent)}:{line} imports {name}"
            if name.startswith("."):
                wrong.append(f"{where}: relative; the broker imports absolutely, so a move shows in the diff")
                continue
            other = name.split(".")[1] if "." in name else "the whole package"
            if other != own and (other not in RANK or RANK[other] >= RANK[own]):
                wrong.append(f"{where}: {own} may not import {other}")
    return wrong


def handler_imports_outside(functions: Path) -> list[str]:
    return [f"{path.relative_to(functions.parent)}:{line} imports {name}"
            for path in sorted(functions.glob("*/app.py")) for line, name in imported(path)
            if not any(name == allowed or name.startswith(allowed + ".") for allowed in HANDLER_IMPORTS)]


def test_every_file_of_the_broker_belongs_to_a_known_part():
    parts = {part_of(p, BROKER) for p in BROKER.rglob("*.py")} - {"__init__"}
    assert parts == set(RANK)


def test_no_module_imports_a_part_above_it_or_a_peer():
    assert upward_imports(BROKER) == []


def test_the_handlers_import_only_the_wiring_the_http_shape_and_the_platform():
    assert len(list((ROOT / "functions").glob("*/app.py"))) == 9
    assert handler_imports_outside(ROOT / "functions") == []


@pytest.mark.parametrize(("path", "source", "why"), [
    ("store/connections.py", "from broker.credentials import tokens\n", "store may not import credentials"),
    ("platform/config.py", "def f():\n    from broker.http import requests_in\n", "platform may not import http"),
    ("proxy/call.py", "from broker.connect import oauth_flow\n", "proxy may not import connect"),
    ("store/quota.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import broker.services\n",
     "store may not import services"),
    ("http/api.py", "from . import popup\n", "relative"),
    ("store/listing.py", "from broker.unknown import thing\n", "store may not import unknown"),
    ("proxy/rules.py", "import broker\n", "proxy may not import the whole package"),
])
def test_the_check_catches_an_import_that_breaks_the_rule(tmp_path, path, source, why):
    broker = tmp_path / "broker"
    (broker / path).parent.mkdir(parents=True)
    (broker / path).write_text(source)
    (broker / "store").mkdir(exist_ok=True)
    (broker / "store" / "labels.py").write_text("from broker.platform.errors import InvalidRequest\n")
    (wrong,) = upward_imports(broker)
    assert why in wrong and wrong.startswith(f"broker/{path}:")


def test_the_check_catches_a_handler_that_reaches_past_the_wiring(tmp_path):
    handler = tmp_path / "functions" / "proxy" / "app.py"
    handler.parent.mkdir(parents=True)
    handler.write_text("from broker import services\nfrom broker.platform import deadline\n"
                       "from broker.proxy.call import InsightlyProxy\n")
    assert handler_imports_outside(tmp_path / "functions") == [
        "functions/proxy/app.py:3 imports broker.proxy.call.InsightlyProxy"]


# -- sizes: a class or a function that outgrows these has two jobs ------------------------------

MAX_CLASS_LINES, MAX_FUNCTION_LINES = 250, 60
PRODUCT_CODE = [BROKER, ROOT / "functions", ROOT / "local", ROOT / "clients" / "python" / "src"]


def oversized(roots: list[Path]) -> list[str]:
    found = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                limit = (MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else
                         MAX_FUNCTION_LINES if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else None)
                if limit and node.end_lineno - node.lineno + 1 > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name}: "
                                 f"{node.end_lineno - node.lineno + 1} lines (at most {limit})")
    return found


def test_no_class_over_250_lines_and_no_function_over_60_in_the_product_code():
    assert oversized(PRODUCT_CODE) == []


def test_the_size_check_counts_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "long.py").write_text(f"def long():\n{body}\n\n\ndef short():\n    return 1\n")
    assert oversized([tmp_path]) == [f"{tmp_path.name}/long.py:1 long: {MAX_FUNCTION_LINES + 1} lines (at most 60)"]
