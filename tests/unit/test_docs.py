"""The docs keep up with the code: every template parameter is documented (in
docs/configuration.md, the one place parameters live), every route is listed, every page is
reachable. `make docs` (mkdocs --strict) checks the links inside docs/; the README lives
outside docs/, so its links to the pages are checked here."""

import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

import yaml

from local.stack import ROOT, load_template

DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
PARAMETER_TABLE_HEADER = "| parameter | default | meaning | env var |"


def documented_parameters(text: str) -> list[str]:
    """The first cell of each row of the configuration page's parameter table."""
    lines = text.splitlines()
    start = lines.index(PARAMETER_TABLE_HEADER) + 2  # past the header and |---| rows
    names = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cell = line.split("|")[1].strip()
        match = re.fullmatch(r"`([A-Za-z0-9]+)`", cell)
        assert match, f"not a parameter name in the first column: {cell!r}"
        names.append(match.group(1))
    return names


def nav_pages(nav) -> list[str]:
    """Every page file named anywhere in mkdocs.yml's nav (sections nest)."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    return []


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub (and mkdocs' toc) give the headings outside code blocks."""
    anchors, fenced = set(), False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"#{1,6} (.+)", line)
        if match:
            title = re.sub(r"[^\w\- ]", "", match.group(1).replace("`", "")).strip().lower()
            anchors.add(re.sub(r"[ ]", "-", title))
    return anchors


def test_every_template_parameter_is_documented_and_nothing_else():
    parameters = set(load_template()["Parameters"])
    documented = documented_parameters(CONFIGURATION.read_text())
    assert len(documented) == len(set(documented)), "a parameter has two rows"
    assert sorted(parameters - set(documented)) == [], "parameters missing from docs/configuration.md"
    assert sorted(set(documented) - parameters) == [], "docs/configuration.md names parameters the template lacks"


def http_routes() -> list[str]:
    """Every "METHOD /path" the template's HTTP API serves."""
    return [f"{event['Properties']['Method'].upper()} {event['Properties']['Path']}"
            for resource in load_template()["Resources"].values()
            if resource["Type"] == "AWS::Serverless::Function"
            for event in resource["Properties"].get("Events", {}).values() if event["Type"] == "HttpApi"]


def test_the_readme_lists_every_route_of_the_template():
    readme = (ROOT / "README.md").read_text()
    assert [route for route in http_routes() if f"`{route}`" not in readme] == []


def test_the_quick_start_comes_right_after_the_first_paragraph():
    # A newcomer reads what it is, then how to run it.
    blocks = (ROOT / "README.md").read_text().split("\n\n")
    assert blocks[0].startswith("# ") and not blocks[1].startswith("#")
    assert blocks[2].startswith("## Quick start")


def test_nothing_in_the_repository_mentions_notes_it_does_not_hold():
    # The project's internal design notes are not in the repository: a reader cannot follow them.
    name = "DESIGN" + ".md"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    mentioning = [path for path in files if (ROOT / path).is_file()
                  and name in (ROOT / path).read_bytes().decode("utf-8", errors="replace")]
    assert mentioning == []


def test_what_users_read_carries_no_internal_issue_numbers():
    # "(issue 10)" means nothing to a reader of the docs, of a file they copy into their app, or
    # of the code they deploy and run (the layer, the handlers, the local stack, the clients).
    code = [ROOT / path for path in subprocess.run(
        ["git", "ls-files", "layers", "functions", "local", "clients", "template.yaml", "Makefile"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        if Path(path).suffix in (".py", ".js", ".mjs", ".ts", ".md", ".yaml", "")]
    read = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), DOCS / "openapi.yaml", *code]
    found = [f"{path.relative_to(ROOT)}: {match.group(0)}" for path in read
             for match in re.finditer(r"\bissues? #?\d+\b", path.read_text(), flags=re.IGNORECASE)]
    assert found == []


def test_the_docs_home_links_every_page_and_the_openapi_document():
    home = (DOCS / "index.md").read_text()
    linked = {link.split("#")[0] for link in re.findall(r"\]\(([^)\s]+)\)", home)}
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = [page for page in nav_pages(config["nav"]) if page != "index.md"] + ["openapi.yaml"]
    assert [page for page in pages if page not in linked] == []


def test_every_docs_page_is_in_the_nav_and_every_nav_page_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    in_nav = nav_pages(config["nav"])
    on_disk = sorted(path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md"))
    assert sorted(set(on_disk) - set(in_nav)) == [], "pages no nav entry leads to (orphans)"
    assert sorted(set(in_nav) - set(on_disk)) == [], "nav entries without a page"
    assert config.get("strict") is True


def test_the_readme_links_every_page_and_each_link_resolves():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    for link in local:
        path, _, anchor = unquote(link).partition("#")
        target = ROOT / path if path else ROOT / "README.md"
        assert target.exists(), f"README links a missing file: {link}"
        if anchor and target.suffix == ".md":
            assert anchor in heading_anchors(target.read_text()), f"README links a missing anchor: {link}"
    linked_pages = {link.split("#")[0] for link in local if link.startswith("docs/")}
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    missing = sorted(f"docs/{page}" for page in nav_pages(config["nav"]) if page != "index.md")
    assert [page for page in missing if page not in linked_pages] == [], "docs pages the README does not link"
