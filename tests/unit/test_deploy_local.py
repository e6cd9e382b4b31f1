"""The install / switch / prune task files (roles/py_release) and the bot's health-gated switch with rollback
(roles/bot/tasks/switch.yml), run by ansible-playbook against a temporary directory on this machine
(connection: local, no systemd: bot_manage_service is off and /readyz is a loopback server of the test that
answers from whichever release `current` points to)."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from deploy_wheels import make_project, make_wheel
from rampart import release as rel

ROOT = Path(__file__).resolve().parents[2]
PLAYS = Path(__file__).parent / "deploy_local"
PLAYBOOK = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent))

pytestmark = pytest.mark.skipif(PLAYBOOK is None, reason="needs ansible-playbook in the virtualenv")


def _run(play: str, extra: dict) -> tuple[int, dict[str, int], str]:
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(ROOT / "roles"), "ANSIBLE_STRATEGY": "linear",
           "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
           "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_NOCOLOR": "1"}
    result = subprocess.run([PLAYBOOK, "-i", "localhost,", str(PLAYS / play), "-e", json.dumps(extra)],
                            capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    recap = re.search(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", result.stdout)
    assert recap, result.stdout[-3000:] + result.stderr[-3000:]
    counts = dict(zip(("ok", "changed", "unreachable", "failed"), map(int, recap.groups()), strict=True))
    return result.returncode, counts, result.stdout + result.stderr


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> dict[str, rel.Release]:
    """tinyapp 1.0, 2.0 and 3.0 (3.0 is the one the health check calls broken), built by release.py."""
    base = tmp_path_factory.mktemp("releases")
    links = base / "links"
    make_wheel(links, "tinydep", "2.0")
    built = {}
    for version in ("1.0", "2.0", "3.0"):
        project = make_project(base / f"app-{version}", version=version, deps=("tinydep==2.0",))
        lock = base / "app.lock"
        rel.write_lock(project, lock, find_links=[links], no_index=True)
        built[version] = rel.build_release(project, lock, base / "out", find_links=[links], no_index=True)
    return built


def _current(root: Path) -> str:
    return os.readlink(root / "current").split("/")[-1]


def test_install_switch_then_a_second_run_changes_nothing(releases, tmp_path):
    root = tmp_path / "opt"
    args = {"py_release_root": str(root), "py_release_archive": releases["1.0"].archive,
            "py_release_smoke": [["bin/tinyapp"]]}
    rc, counts, out = _run("release.yml", args)
    assert rc == 0 and counts["changed"] > 0, out
    release = root / "releases" / releases["1.0"].id
    assert _current(root) == releases["1.0"].id and (release / ".rampart-release").is_file()
    assert not (release / "release.tar").exists()
    ran = subprocess.run([str(root / "current/venv/bin/tinyapp")], capture_output=True, text=True, check=True)
    assert ran.stdout.strip() == "tinyapp ok"
    assert oct((root / "releases").stat().st_mode & 0o777) == "0o755"

    rc, counts, out = _run("release.yml", args)
    assert rc == 0 and counts["changed"] == 0, out


def test_prune_keeps_the_newest_and_the_current(releases, tmp_path):
    root = tmp_path / "opt"
    for version in ("1.0", "2.0", "3.0"):
        rc, _, out = _run("release.yml", {"py_release_root": str(root), "py_release_archive": releases[version].archive,
                                          "py_release_keep": 2, "do_switch": version == "1.0"})
        assert rc == 0, out
    kept = sorted(p.name for p in (root / "releases").iterdir())
    # 3.0 and 2.0 are the newest two; 1.0 stays because current points to it.
    assert kept == sorted(releases[v].id for v in ("1.0", "2.0", "3.0"))
    rc, _, out = _run("release.yml", {"py_release_root": str(root), "py_release_archive": releases["3.0"].archive,
                                      "py_release_keep": 1})
    assert rc == 0, out
    assert sorted(p.name for p in (root / "releases").iterdir()) == [releases["3.0"].id]


def test_an_unfinished_release_is_redone_and_never_switched_to(releases, tmp_path):
    root = tmp_path / "opt"
    partial = root / "releases" / releases["1.0"].id
    (partial / "venv").mkdir(parents=True)  # an earlier run died half way: no completion marker
    rc, _, out = _run("release.yml", {"py_release_root": str(root), "py_release_archive": releases["1.0"].archive})
    assert rc == 0, out
    assert (partial / ".rampart-release").is_file() and (partial / "venv/bin/python").exists()


@pytest.fixture(scope="module")
def installed(releases, tmp_path_factory) -> Path:
    """A root with release 1.0 installed and current (copied per test: the copies' venvs are never run)."""
    root = tmp_path_factory.mktemp("installed") / "opt"
    rc, _, out = _run("release.yml", {"py_release_root": str(root), "py_release_archive": releases["1.0"].archive})
    assert rc == 0, out
    return root


@pytest.mark.parametrize("breakage, message", [
    ("python", r"was built for Python 3\.99 on x86_64 but localhost has 3\.\d+ "),
    ("disk", r"not enough disk: .* has \d+ MiB free, the release needs \d+ MiB"),
    ("smoke", r"did not install on localhost \(Smoke-test the release\)"),
    ("hash", r"did not install on localhost \(Check the archive arrived intact\)"),
])
def test_a_release_that_cannot_install_stops_before_the_running_one_is_touched(releases, installed, tmp_path,
                                                                               breakage, message):
    root = tmp_path / "opt"
    shutil.copytree(installed, root, symlinks=True)
    archive = tmp_path / "broken.tar"
    shutil.copy(releases["2.0"].archive, archive)
    side = json.loads(Path(releases["2.0"].archive + ".json").read_text())
    extra: dict = {}
    if breakage == "python":
        side["python"] = "3.99"
    elif breakage == "disk":
        extra["py_release_min_free_mb"] = 1 << 30
    elif breakage == "smoke":
        extra["py_release_smoke"] = [["bin/python", "-c", "raise SystemExit('entry point exits')"]]
    elif breakage == "hash":
        side["sha256"] = "0" * 64
    Path(f"{archive}.json").write_text(json.dumps(side))
    rc, counts, out = _run("release.yml", {"py_release_root": str(root), "py_release_archive": str(archive), **extra})
    assert rc != 0 and counts["failed"] == 1 and re.search(message, out), out
    assert _current(root) == releases["1.0"].id
    assert sorted(p.name for p in (root / "releases").iterdir()) == [releases["1.0"].id]


class _Ready(http.server.BaseHTTPRequestHandler):
    root: Path
    broken: str

    def do_GET(self):  # noqa: N802 - http.server's interface
        try:
            manifest = json.loads((self.root / "current/dist/MANIFEST.json").read_text())
        except OSError:
            manifest = {"version": "none"}
        ready = manifest["version"] != self.broken
        body = json.dumps({"ready": ready, "checks": {"feed_fresh": ready, "reconciled": True}}).encode()
        self.send_response(200 if ready else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def readyz(tmp_path):
    handler = type("Handler", (_Ready,), {"root": tmp_path / "opt", "broken": "3.0"})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/readyz"
    server.shutdown()


def test_the_gate_switches_to_a_healthy_release_and_rolls_back_a_broken_one(releases, tmp_path, readyz):
    root = tmp_path / "opt"
    common = {"bot_root": str(root), "bot_health_url": readyz, "bot_ready_timeout_sec": 4}
    for version in ("1.0", "2.0"):
        rc, counts, out = _run("gate.yml", {**common, "bot_release_archive": releases[version].archive})
        assert rc == 0, out
        assert _current(root) == releases[version].id
    assert f"rampart-bot {releases['2.0'].id} ready" in out and f"(was {releases['1.0'].id})" in out

    rc, counts, out = _run("gate.yml", {**common, "bot_release_archive": releases["2.0"].archive})
    assert rc == 0 and counts["changed"] == 0, out

    rc, counts, out = _run("gate.yml", {**common, "bot_release_archive": releases["3.0"].archive})
    assert rc != 0 and counts["failed"] == 1, out
    assert _current(root) == releases["2.0"].id
    flat = " ".join(out.split())
    assert f"release {releases['3.0'].id} failed at Wait for /readyz: /readyz answered 503" in flat, flat[-2000:]
    assert '"feed_fresh": false' in flat and f"Rolled back to {releases['2.0'].id} (ready, " in flat


def test_a_first_release_that_never_gets_ready_is_not_left_current(releases, tmp_path, readyz):
    root = tmp_path / "opt"
    rc, counts, out = _run("gate.yml", {"bot_root": str(root), "bot_health_url": readyz, "bot_ready_timeout_sec": 2,
                                        "bot_release_archive": releases["3.0"].archive})
    assert rc != 0 and "No previous release to roll back to" in " ".join(out.split()), out
