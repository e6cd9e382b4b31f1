"""The controller-side release build (infra/rampart/release.py), offline: tiny local wheels and an in-tree
build backend stand in for PyPI and hatchling, so every pip call here is real but reads only local files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from deploy_wheels import make_project, make_wheel, sha256
from rampart import release as rel


@pytest.fixture()
def source(tmp_path: Path) -> dict[str, Path]:
    """A project `tinyapp` depending on `tinydep==2.0` (which needs `tinysub==1.1`), its wheels in `links`."""
    links = tmp_path / "links"
    make_wheel(links, "tinydep", "2.0", requires=("tinysub==1.1",))
    make_wheel(links, "tinysub", "1.1")
    make_wheel(links, "tinydep", "3.0")  # a newer one the lock must not pick up
    project = make_project(tmp_path / "app", deps=("tinydep==2.0",),
                           main="import tinydep\n\ndef main():\n    print('tinyapp', tinydep.VERSION)\n    return 0\n")
    lock = tmp_path / "app.lock"
    rel.write_lock(project, lock, find_links=[links], no_index=True)
    return {"links": links, "project": project, "lock": lock, "out": tmp_path / "out"}


def _build(s: dict[str, Path]) -> rel.Release:
    return rel.build_release(s["project"], s["lock"], s["out"], find_links=[s["links"]], no_index=True)


def test_the_lock_pins_the_resolved_set_with_hashes(source):
    entries = rel.parse_lock(source["lock"])
    assert {k: e.version for k, e in entries.items()} == {"tinydep": "2.0", "tinysub": "1.1"}
    assert entries["tinydep"].sha256 == sha256(source["links"] / "tinydep-2.0-py3-none-any.whl")


def test_build_twice_is_the_same_release_without_running_pip(source, monkeypatch):
    first = _build(source)
    assert not first.cached and first.id.startswith("1.0.0-") and len(first.id) == len("1.0.0-") + 12
    manifest = rel.verify_release(Path(first.directory))
    assert sorted(manifest["files"]) == ["wheels/tinyapp-1.0.0-py3-none-any.whl",
                                         "wheels/tinydep-2.0-py3-none-any.whl", "wheels/tinysub-1.1-py3-none-any.whl"]
    mtime = Path(first.archive).stat().st_mtime_ns

    def no_pip(*args, **kwargs):
        raise AssertionError("pip ran for an unchanged release")

    monkeypatch.setattr(rel, "_pip", no_pip)
    second = _build(source)
    assert second.cached and (second.id, second.sha256) == (first.id, first.sha256)
    assert Path(second.archive).stat().st_mtime_ns == mtime


def test_a_rebuild_from_scratch_gives_the_same_bytes(source):
    first = _build(source)
    shutil.rmtree(source["out"])
    second = _build(source)
    assert not second.cached and (second.id, second.sha256) == (first.id, first.sha256)


def test_a_source_change_makes_a_new_release(source):
    first = _build(source)
    (source["project"] / "src/tinyapp/cli.py").write_text("def main():\n    return 1\n")
    second = _build(source)
    assert not second.cached and second.id != first.id
    # a test-only change does not (tests never reach the wheel)
    (source["project"] / "tests").mkdir()
    (source["project"] / "tests/test_x.py").write_text("x = 1\n")
    assert _build(source).cached


def test_the_archive_is_deterministic_and_complete(source):
    release = _build(source)
    with tarfile.open(release.archive) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid, m.mode) for m in members} == {(0, 0, 0, 0o644)}
    assert {"MANIFEST.json", "requirements.txt"} <= {m.name for m in members}
    side = json.loads(Path(release.archive + ".json").read_text())
    assert side["sha256"] == sha256(Path(release.archive)) and side["id"] == release.id
    assert side["size"] == Path(release.archive).stat().st_size
    assert side["python"] == f"{sys.version_info[0]}.{sys.version_info[1]}"


def test_a_corrupted_wheel_in_the_release_is_refused_then_rebuilt(source):
    release = _build(source)
    wheel = Path(release.directory) / "wheels/tinydep-2.0-py3-none-any.whl"
    wheel.write_bytes(wheel.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(rel.ReleaseError, match="tinydep-2.0-py3-none-any.whl: sha256 .* does not match"):
        rel.verify_release(Path(release.directory))
    again = _build(source)  # the damaged cache is not trusted
    assert not again.cached and again.id == release.id
    rel.verify_release(Path(again.directory))


def test_a_corrupted_cached_dependency_is_fetched_again(source):
    _build(source)
    cached = source["out"] / "wheelhouse/tinysub-1.1-py3-none-any.whl"
    cached.write_bytes(b"not a wheel")
    shutil.rmtree(source["out"] / "tinyapp")
    release = _build(source)
    assert sha256(cached) == rel.parse_lock(source["lock"])["tinysub"].sha256
    rel.verify_release(Path(release.directory))


def test_a_dependency_whose_bytes_differ_from_the_lock_is_refused(source):
    wheel = source["links"] / "tinysub-1.1-py3-none-any.whl"
    wheel.write_bytes(wheel.read_bytes() + b"\0")  # the index now serves different bytes
    pattern = (r"fetching the wheels locked in .* failed: tinysub==1.1 does not match its locked hash "
               r"\(expected [0-9a-f]{16}…, got [0-9a-f]{16}…\)")
    with pytest.raises(rel.ReleaseError, match=pattern):
        _build(source)
    assert not (source["out"] / "tinyapp").exists()


def test_the_host_side_pip_refuses_a_tampered_wheel_and_installs_a_good_one(source, tmp_path):
    release = _build(source)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    install = [sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "--disable-pip-version-check",
               "install", "--no-index", "--require-hashes", "--only-binary=:all:", "--no-cache-dir"]

    tampered = tmp_path / "tampered"
    shutil.copytree(release.directory, tampered)
    make_wheel(tampered / "wheels", "tinysub", "1.1", files={"tinysub/__init__.py": "import os  # evil\n"})
    result = subprocess.run([*install, "--find-links", str(tampered / "wheels"), "-r",
                             str(tampered / "requirements.txt")], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "DO NOT MATCH THE HASHES" in result.stderr

    good = subprocess.run([*install, "--find-links", str(Path(release.directory) / "wheels"), "-r",
                           str(Path(release.directory) / "requirements.txt")], capture_output=True, text=True,
                          check=False)
    assert good.returncode == 0, good.stderr
    out = subprocess.run([str(venv / "bin/tinyapp")], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "tinyapp 2.0"


@pytest.mark.parametrize("deps, lock_text, message", [
    (("tinydep>=2.0",), "tinydep==2.0 --hash=sha256:" + "a" * 64, r"dependencies\[0\] 'tinydep>=2.0' is not pinned"),
    (("tinydep==2.0",), "tinydep==1.9 --hash=sha256:" + "a" * 64, "tinydep is locked at 1.9 but .* pins 2.0"),
    (("tinydep==2.0",), "other==1 --hash=sha256:" + "a" * 64, r"tinydep==2.0 .* is not locked"),
    (("tinydep==2.0",), "tinydep==2.0\n", r"lock:1: expected `name==version --hash"),
    (("tinydep==2.0",), "tinydep==2.0 --hash=sha256:abc\n", r"lock:1: expected"),
    (("tinydep==2.0",), "# nothing\n", "lists no packages"),
    (("tinydep==2.0",), f"tinydep==2.0 \\\n  --hash=sha256:{'a' * 64}\nTinyDep==2.0 --hash=sha256:{'b' * 64}\n",
     r"lock:3: TinyDep listed twice"),
])
def test_bad_locks_and_pins_are_refused_with_one_line(tmp_path, deps, lock_text, message):
    project = make_project(tmp_path / "app", deps=deps)
    lock = tmp_path / "x.lock"
    lock.write_text(lock_text)
    with pytest.raises(rel.ReleaseError, match=message) as info:
        rel.check_lock(project, lock)
    assert "\n" not in str(info.value)


def test_the_cli_reports_one_line_and_exit_2(tmp_path, capsys):
    project = make_project(tmp_path / "app")
    code = rel.main(["build", "--project", str(project), "--lock", str(tmp_path / "missing.lock"),
                     "--out", str(tmp_path / "out"), "--no-index"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("rampart-release: ") and "missing.lock: cannot read lock file" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_the_cli_build_prints_the_release(source, capsys):
    args = ["build", "--project", str(source["project"]), "--lock", str(source["lock"]), "--out",
            str(source["out"]), "--no-index", "--find-links", str(source["links"])]
    assert rel.main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["cached"] is False and Path(printed["archive"]).is_file()
    assert rel.main(args) == 0 and json.loads(capsys.readouterr().out)["cached"] is True


def test_the_bot_lock_covers_the_bots_pins():
    root = Path(__file__).resolve().parents[2]
    entries = rel.check_lock(root / "bot", root / "requirements-bot.lock")
    assert "aiohttp" in entries and all(len(e.sha256) == 64 for e in entries.values())
