"""The dependency locks (finding 15 of issue 7): every package pinned with hashes, and in step
with pyproject.toml, which people edit; `make lock` regenerates both."""

import re
import tomllib

import pytest

from local.stack import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEV_LOCK = ROOT / "requirements-dev.txt"
LAYER_LOCK = ROOT / "layers" / "common" / "requirements.txt"
# The Lambda runtime ships boto3 and a botocore matched to it; a layer copy would shadow them.
FROM_THE_RUNTIME = {"boto3", "botocore", "s3transfer"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path) -> dict[str, list[tuple[str, str, list[str]]]]:
    """name -> [(version, environment marker, hashes)] from a pip requirements file."""
    entries: dict[str, list] = {}
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+?)\s*(?:;\s*(.*?))?((?:\s*--hash=sha256:[0-9a-f]{64})*)", line)
        assert match, f"{path.name}: not a pinned requirement: {line[:80]}"
        name, version, marker, hashes = match.groups()
        entries.setdefault(canonical(name), []).append((version, marker or "", hashes.split()))
    return entries


def pins(requirements: list[str]) -> dict[str, str | None]:
    """name -> the exact version pyproject.toml asks for (None when it leaves it open)."""
    found = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9._-]+)(?:\[[^\]]*\])?\s*(?:==\s*([^\s;,]+))?", requirement.strip())
        assert match, requirement
        found[canonical(match.group(1))] = match.group(2)
    return found


@pytest.mark.parametrize("lock", [DEV_LOCK, LAYER_LOCK], ids=["dev", "layer"])
def test_every_locked_package_is_pinned_with_hashes(lock):
    entries = locked(lock)

    assert entries
    for name, versions in entries.items():
        for _version, _marker, hashes in versions:
            assert hashes, f"{lock.name}: {name} has no --hash"


def test_the_layer_lock_holds_the_runtime_dependencies_at_their_pinned_versions_and_no_boto():
    layer = locked(LAYER_LOCK)
    runtime = pins(PYPROJECT["project"]["dependencies"])

    for name, version in runtime.items():
        if name in FROM_THE_RUNTIME:
            continue
        assert name in layer, f"{name} is not in the layer lock: run make lock"
        assert version is None or [v for v, _, _ in layer[name]] == [version], f"{name}: run make lock"
    assert not FROM_THE_RUNTIME & set(layer), "the layer must not carry boto3/botocore/s3transfer"
    assert "cryptography" in layer  # the vault's AES-GCM


def test_the_dev_lock_holds_every_runtime_and_dev_dependency_at_its_pinned_version():
    dev = locked(DEV_LOCK)
    wanted = pins(PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["dev"])

    for name, version in wanted.items():
        assert name in dev, f"{name} is not in the dev lock: run make lock"
        assert version is None or {v for v, _, _ in dev[name]} == {version}, f"{name}: run make lock"


def test_the_layer_and_the_dev_venv_run_the_same_versions_of_what_they_share():
    dev, layer = locked(DEV_LOCK), locked(LAYER_LOCK)

    for name, [(version, _, _)] in layer.items():
        assert version in {v for v, _, _ in dev[name]}, f"{name}: the tests would not run the layer's version"


def test_make_install_and_the_layer_build_install_only_from_the_locks():
    makefile = (ROOT / "Makefile").read_text()
    layer_makefile = (ROOT / "layers" / "common" / "Makefile").read_text()

    install = re.search(r"^\$\(STAMP\):.*?(?=^\S)", makefile, re.MULTILINE | re.DOTALL).group(0)
    assert "--require-hashes -r $(DEV_LOCK)" in install and ".[dev]" not in install
    assert "--require-hashes" in layer_makefile and "--no-deps" in layer_makefile
    assert "-r requirements.txt" in layer_makefile
