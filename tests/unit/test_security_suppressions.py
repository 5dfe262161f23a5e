"""`make security` fails on any scanner finding not suppressed inline with a reason. The scanners
themselves accept a bare suppression, so these tests make sure each one names the check and
says why, where the reader of the line sees it."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKOV_SKIP = re.compile(r"checkov:skip=([^:\s]*)(?::(.*))?")
NOSEC = re.compile(r"#\s*nosec\b(.*)")


def checkov_skips(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), (m.group(2) or "").strip()) for m in CHECKOV_SKIP.finditer(text)]


def nosec_comments(text: str) -> list[str]:
    return [m.group(1) for m in NOSEC.finditer(text)]


def nosec_is_explained(rest: str) -> bool:
    """`# nosec B105  # why`: one or more bandit ids, then a comment with the reason."""
    return re.fullmatch(r"\s+B\d{3}(,\s*B\d{3})*\s+#\s*\S.{9,}", rest) is not None


def test_every_checkov_skip_in_the_template_names_one_check_and_gives_a_reason():
    skips = checkov_skips((ROOT / "template.yaml").read_text())
    assert skips, "template.yaml has no checkov suppressions; this test would prove nothing"
    for check_id, reason in skips:
        assert re.fullmatch(r"CKV2?_AWS_\d+", check_id), check_id
        assert len(reason.split()) >= 4, f"{check_id}: a one-line reason is required, got {reason!r}"


def test_every_nosec_in_the_deployed_code_names_the_test_and_gives_a_reason():
    found = 0
    for path in [*(ROOT / "layers").rglob("*.py"), *(ROOT / "functions").rglob("*.py")]:
        for rest in nosec_comments(path.read_text()):
            found += 1
            assert nosec_is_explained(rest), f"{path.relative_to(ROOT)}: '# nosec{rest}' needs Bnnn and '# reason'"
    assert found, "no nosec comments found; this test would prove nothing"


def test_bare_suppressions_are_refused():
    assert checkov_skips("# checkov:skip=CKV_AWS_117") == [("CKV_AWS_117", "")]
    assert not nosec_is_explained(nosec_comments('x = "a"  # nosec')[0])
    assert not nosec_is_explained(nosec_comments('x = "a"  # nosec B105')[0])
    assert nosec_is_explained(nosec_comments('x = "a"  # nosec B105  # a method name, no secret')[0])
