# ruff: noqa: S108 - the paths are mount points under test, not temporary files
"""The mount-flag script and its boot unit: rendered from the role defaults, then run for real in a private
mount namespace (`unshare -m`, nothing leaks out) against scratch directories — a plain directory that gets
bound onto itself, one that becomes a tmpfs, and a tmpfs that exists already (like nspawn's /tmp)."""

import os
import shutil
import subprocess
from pathlib import Path

import compliance_core as core  # noqa: E402
import controls_os  # noqa: E402
import pytest
from hardening_templates import render


def test_defaults_cover_the_three_world_writable_directories():
    script = render("hardening", "mount-options.sh.j2")
    for line in ("harden /tmp bind", "harden /var/tmp bind", "harden /dev/shm tmpfs", "flags=nodev,nosuid,noexec"):
        assert f"\n{line}" in script


def test_the_script_is_valid_bash():
    path = Path(shutil.which("bash") or "/bin/bash")
    result = subprocess.run([path, "-n", "/dev/stdin"], input=render("hardening", "mount-options.sh.j2"),
                            text=True, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_the_boot_unit_verifies(tmp_path):
    unit = render("hardening", "rampart-mount-options.service.j2")
    assert "Before=local-fs.target" in unit and "RequiresMountsFor=/dev/shm /tmp /var/tmp" in unit
    path = tmp_path / "rampart-mount-options.service"
    path.write_text(unit.replace("/usr/local/sbin/rampart-mount-options", "/bin/true"))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr


def _can_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare -m (a private mount namespace)")
def test_the_script_mounts_remounts_and_then_does_nothing(tmp_path):
    plain, ram, premounted = (tmp_path / n for n in ("plain", "ram", "premounted"))
    for d in (plain, ram, premounted):
        d.mkdir()
    (plain / "kept").write_text("still here")
    script = tmp_path / "rampart-mount-options"
    script.write_text(render("hardening", "mount-options.sh.j2",
                             hardening_mounts={str(plain): "bind", str(ram): "tmpfs", str(premounted): "bind"}))
    script.chmod(0o755)
    inner = f"""
        set -e
        mount -t tmpfs -o nosuid,nodev tmpfs {premounted}
        echo '--- first'; {script}
        echo '--- second'; {script}
        echo '--- state'
        for d in {plain} {ram} {premounted}; do findmnt -rn -o TARGET,FSTYPE,VFS-OPTIONS --mountpoint $d; done
        cat {plain}/kept
        """
    result = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", inner],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    first, rest = result.stdout.split("--- second\n")
    second, state = rest.split("--- state\n")
    assert f"mounted {plain} (bind)" in first and f"mounted {ram} (tmpfs)" in first
    assert f"remounted {premounted} with nodev,nosuid,noexec" in first
    assert second == "", f"second run changed something: {second!r}"
    rows = {line.split()[0]: line.split() for line in state.splitlines() if line.startswith("/")}
    assert rows[str(ram)][1] == "tmpfs" and rows[str(premounted)][1] == "tmpfs"
    for target, (_, _, options) in rows.items():
        assert {"nodev", "nosuid", "noexec"} <= set(options.split(",")), target
    assert state.rstrip().endswith("still here"), "a bind mount must keep the files"


# --- compliance controls over /proc/self/mountinfo ------------------------------------------------------------

MOUNTINFO_OK = """\
23 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
24 23 0:20 / /dev/shm rw,nosuid,nodev,noexec shared:2 - tmpfs tmpfs rw
25 23 8:1 /tmp /tmp rw,nosuid,nodev,noexec,relatime shared:1 - ext4 /dev/vda1 rw
26 23 8:1 /var/tmp /var/tmp rw,nosuid,nodev,noexec,relatime shared:1 - ext4 /dev/vda1 rw
"""


def _facts(mountinfo: str) -> core.Facts:
    return core.Facts(name="db01", env="prod", data={"files": {"/proc/self/mountinfo": mountinfo}})


def test_mount_controls_pass_on_flagged_mounts():
    for check in (controls_os.mounts_noexec, controls_os.mounts_nosuid, controls_os.mounts_nodev):
        check(_facts(MOUNTINFO_OK))


def test_a_missing_flag_or_mount_point_fails():
    no_exec = MOUNTINFO_OK.replace("/dev/shm rw,nosuid,nodev,noexec", "/dev/shm rw,nosuid,nodev")
    with pytest.raises(AssertionError, match="/dev/shm"):
        controls_os.mounts_noexec(_facts(no_exec))
    without_tmp = "".join(line + "\n" for line in MOUNTINFO_OK.splitlines() if " /tmp " not in line)
    with pytest.raises(AssertionError, match="/tmp is not a mount point"):
        controls_os.mounts_nodev(_facts(without_tmp))


def test_the_last_mount_on_a_path_is_the_one_that_counts():
    stacked = MOUNTINFO_OK + "27 25 0:30 / /tmp rw,relatime shared:5 - tmpfs tmpfs rw\n"
    with pytest.raises(AssertionError, match="/tmp"):
        controls_os.mounts_nosuid(_facts(stacked))
