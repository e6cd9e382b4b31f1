#!/usr/bin/python3
"""Print what protects Vault's memory on this host, as JSON (run by roles/vault; changes nothing).

cap_ipc_lock: whether the host's capability bounding set (PID 1's) still has CAP_IPC_LOCK, which mlock needs
(a container may have dropped it). swaps: every active swap area and whether its contents are safe at rest:
zram lives in RAM, and a device-mapper target whose uuid starts with CRYPT- is dm-crypt.
"""
import json
import os

CAP_IPC_LOCK = 14


def cap_bounding() -> int:
    with open("/proc/1/status") as f:
        for line in f:
            if line.startswith("CapBnd:"):
                return int(line.split()[1], 16)
    return 0


def swap_protected(device: str) -> tuple[bool, str]:
    real = os.path.realpath(device)
    name = os.path.basename(real)
    if name.startswith("zram"):
        return True, "zram (in memory)"
    try:
        with open(f"/sys/block/{name}/dm/uuid") as f:
            if f.read().startswith("CRYPT-"):
                return True, "dm-crypt"
    except OSError:
        pass
    return False, "not encrypted (a swap file or a plain partition)"


swaps = []
with open("/proc/swaps") as f:
    for line in f.read().splitlines()[1:]:
        if line.strip():
            device = line.split()[0]
            protected, why = swap_protected(device)
            swaps.append({"device": device, "protected": protected, "why": why})
print(json.dumps({"cap_ipc_lock": bool(cap_bounding() >> CAP_IPC_LOCK & 1), "swaps": swaps}))
