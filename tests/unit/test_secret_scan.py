"""No secret in the repository: detect-secrets scans every tracked file; each finding must be one a person has
reviewed and recorded in .secrets.baseline as not a secret (demo values, test fixtures, checksums, variable
names). A new finding fails here, naming file and line, until it is removed or reviewed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / ".secrets.baseline"
SCANNER = Path(sys.executable).with_name("detect-secrets")


def _scan(files: list[str]) -> dict:
    proc = subprocess.run([str(SCANNER), "scan", "--exclude-files", r"^(requirements\.lock|\.secrets\.baseline)$",
                           *files], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)["results"]


@pytest.mark.skipif(not SCANNER.exists() or shutil.which("git") is None, reason="needs detect-secrets and git")
def test_every_finding_is_a_reviewed_false_positive():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    reviewed = {(f, i["hashed_secret"], i["type"])
                for f, items in json.loads(BASELINE.read_text())["results"].items()
                for i in items if i.get("is_secret") is False}
    found = _scan(files)
    new = sorted(f"{f}:{i['line_number']}: {i['type']}" for f, items in found.items() for i in items
                 if (f, i["hashed_secret"], i["type"]) not in reviewed)
    print(f"\nsecret scan: {len(files)} files, {sum(map(len, found.values()))} findings, all reviewed: {not new}")
    assert not new, "unreviewed possible secrets (remove them, or review and add to .secrets.baseline):\n" + \
        "\n".join(new)


@pytest.mark.skipif(not SCANNER.exists(), reason="needs detect-secrets")
def test_a_planted_secret_is_found(tmp_path):
    leak = tmp_path / "leak.py"
    planted = 'aws_access_key_id = "AKIAIOSFODNN7EXAMPLF"\n'  # pragma: allowlist secret
    leak.write_text(planted + 'password = "correct-horse-battery-staple-42"\n')  # pragma: allowlist secret
    # (run from the file's own directory: from inside a git checkout the scanner only looks at paths below it)
    proc = subprocess.run([str(SCANNER), "scan", leak.name], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout)["results"], "the scanner found nothing in a planted secret"
