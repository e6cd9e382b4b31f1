"""A lab host survives `systemctl reboot`: nspawn exits with 133 and the launcher boots it again."""

import time

from support.lab import SSH_CONFIG, remote, run


def test_host_survives_reboot():
    name = "backup01"
    host = remote(name)
    before = host.check_output("cat /proc/sys/kernel/random/boot_id")
    run(["ssh", "-F", str(SSH_CONFIG), "-O", "exit", name])
    host.run("systemctl reboot")
    deadline = time.monotonic() + 60
    after = before
    while time.monotonic() < deadline:
        proc = run(["ssh", "-F", str(SSH_CONFIG), "-o", "ControlPath=none", "-o", "ConnectTimeout=2",
                    name, "cat /proc/sys/kernel/random/boot_id; systemctl is-system-running --wait"])
        lines = proc.stdout.split()
        if proc.returncode == 0 and lines and lines[0] != before:
            after = lines[0]
            assert lines[1] == "running", proc.stdout
            break
        time.sleep(0.5)
    assert after != before, f"{name} did not come back from reboot within 60 s"
