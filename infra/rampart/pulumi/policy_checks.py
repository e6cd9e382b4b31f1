"""The rampart policy checks as pure functions over resource properties.

Each check takes the properties Pulumi passes a policy (the provider's camelCase input names, e.g.
``networksAdvanced``) and returns a list of violation messages: empty means compliant. ``__main__.py`` wraps
them into a pulumi-policy pack; the tests call them directly, on the program's mocked resources and on
hand-made violating ones. No import of pulumi here, so the checks load anywhere.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

CONTAINER = "docker:index/container:Container"
NETWORK = "docker:index/network:Network"

# What systemd, sshd, sudo and dpkg need, plus NET_ADMIN (gateway routing/NAT, host nftables, WireGuard)
# and IPC_LOCK (Vault's mlock). Kept in step with rampart.pulumi.plan.ALLOWED_CAPABILITIES by a test.
ALLOWED_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT", "NET_ADMIN", "IPC_LOCK",
})
# The one port the platform publishes: WireGuard on the gateway.
DEFAULT_ALLOWED_PORTS = frozenset({(51820, "udp")})
ALLOWED_DEVICES = frozenset({"/dev/net/tun"})
CGROUP_ROOT = "/sys/fs/cgroup"
# Host paths whose bind mount would hand the container the host (or Docker, which is the same thing).
FORBIDDEN_HOST_PATHS = ("/", "/etc", "/root", "/home", "/proc", "/sys", "/dev", "/boot", "/var/lib/docker",
                        "/var/run/docker.sock", "/run/docker.sock", "/run/containerd")

SECRET_NAME = re.compile(r"(PASS(WORD|WD)?|SECRET|TOKEN|API_?KEY|PRIVATE|CREDENTIAL|ACCESS_?KEY|AUTH)",
                         re.IGNORECASE)
SECRET_VALUE = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----"  # PEM private keys
    r"|AKIA[0-9A-Z]{16}"  # AWS access key ids
    r"|hvs\.[A-Za-z0-9_-]{20,}"  # Vault service tokens
    r"|\b[A-Fa-f0-9]{40,}\b"  # long hex strings (API secrets, HMAC keys)
    r"|\b[A-Za-z0-9+/]{40,}={0,2}(?![A-Za-z0-9+/=])"  # long base64 blobs
)

PUBLIC_KEY = re.compile(r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-[a-z0-9@.-]+) [A-Za-z0-9+/]+=* ?.*$")


def _cap(name: str) -> str:
    return name.upper().removeprefix("CAP_")


def labels_of(props: Mapping[str, Any]) -> dict[str, str]:
    raw = props.get("labels") or []
    if isinstance(raw, Mapping):
        return {str(k): str(v) for k, v in raw.items()}
    return {str(item.get("label")): str(item.get("value")) for item in raw if isinstance(item, Mapping)}


def looks_secret(name: str, value: str) -> bool:
    """A name that says secret, or a value shaped like key material."""
    return bool(SECRET_NAME.search(name)) or bool(SECRET_VALUE.search(value))


# ---- containers ---------------------------------------------------------------------------------

def check_not_privileged(props: Mapping[str, Any]) -> list[str]:
    out = []
    if props.get("privileged"):
        out.append("container is privileged: it would hold every capability and all host devices")
    for key in ("networkMode", "pidMode", "ipcMode", "usernsMode"):
        if str(props.get(key) or "").lower() == "host":
            out.append(f"{key} is 'host': the container would share the Docker host's namespace")
    return out


def check_capabilities(props: Mapping[str, Any],
                       allowed: Iterable[str] = ALLOWED_CAPABILITIES) -> list[str]:
    caps = props.get("capabilities") or {}
    drops = {_cap(c) for c in caps.get("drops") or []}
    adds = sorted({_cap(c) for c in caps.get("adds") or []})
    allowed = {_cap(c) for c in allowed}
    out = []
    if "ALL" not in drops:
        out.append("capabilities.drops must include ALL, so only the listed capabilities are granted")
    extra = [c for c in adds if c not in allowed]
    if extra:
        out.append(f"capabilities not allowed: {', '.join(extra)} (allowed: {', '.join(sorted(allowed))})")
    return out


def check_published_ports(props: Mapping[str, Any],
                          allowed: Iterable[tuple[int, str]] = DEFAULT_ALLOWED_PORTS) -> list[str]:
    allowed = {(int(p), str(proto).lower()) for p, proto in allowed}
    out = []
    if props.get("publishAllPorts"):
        out.append("publishAllPorts is set: every exposed port would be published")
    for port in props.get("ports") or []:
        internal = int(port.get("internal", 0))
        external = int(port.get("external") or internal)
        proto = str(port.get("protocol") or "tcp").lower()
        if (internal, proto) not in allowed or external != internal:
            out.append(f"published port {external}->{internal}/{proto} is not allowed "
                       f"(only {', '.join(f'{p}/{pr}' for p, pr in sorted(allowed))})")
    return out


def check_no_secrets(props: Mapping[str, Any]) -> list[str]:
    out = []
    for env in props.get("envs") or []:
        name, _, value = str(env).partition("=")
        if looks_secret(name, value):
            out.append(f"environment variable {name!r} looks like a secret: deliver secrets through "
                       "Vault or systemd credentials, never the container config")
    for name, value in labels_of(props).items():
        if looks_secret(name, value):
            out.append(f"label {name!r} looks like a secret")
    for up in props.get("uploads") or []:
        if up.get("contentBase64") or up.get("source"):
            out.append(f"uploaded file {up.get('file')!r}: opaque content cannot be checked; use plain text")
            continue
        # Public keys are long base64 by nature: judge every other line only.
        lines = [ln for ln in str(up.get("content") or "").splitlines() if not PUBLIC_KEY.match(ln)]
        if any("PRIVATE KEY" in ln or SECRET_VALUE.search(ln) for ln in lines):
            out.append(f"uploaded file {up.get('file')!r} looks like a secret")
    return out


def check_mounts(props: Mapping[str, Any]) -> list[str]:
    out = []
    binds = [(v.get("hostPath"), v.get("containerPath"))
             for v in props.get("volumes") or [] if v.get("hostPath")]
    binds += [(m.get("source"), m.get("target")) for m in props.get("mounts") or []
              if str(m.get("type", "")).lower() == "bind"]
    for host_path, target in binds:
        path = "/" + str(host_path).strip("/")
        if path == CGROUP_ROOT or (path.startswith(CGROUP_ROOT + "/") and target != CGROUP_ROOT):
            out.append(f"bind mount of {host_path}: only a per-container sub-tree of {CGROUP_ROOT} may be "
                       "mounted, and only onto /sys/fs/cgroup")
        elif path.startswith(CGROUP_ROOT + "/"):
            continue
        elif any(path == f or (f != "/" and path.startswith(f + "/")) for f in FORBIDDEN_HOST_PATHS):
            out.append(f"bind mount of host path {host_path} into {target} exposes the Docker host")
    for dev in props.get("devices") or []:
        if dev.get("hostPath") not in ALLOWED_DEVICES:
            out.append(f"device {dev.get('hostPath')} is not allowed (only {', '.join(ALLOWED_DEVICES)})")
    if not props.get("cgroupnsMode"):
        out.append("cgroupnsMode is not set: say explicitly which cgroup namespace systemd runs in")
    return out


def check_operability(props: Mapping[str, Any]) -> list[str]:
    out = []
    if str(props.get("restart") or "no") == "no":
        out.append("no restart policy: a host would stay down after a Docker restart")
    health = props.get("healthcheck") or {}
    if not health.get("tests"):
        out.append("no healthcheck")
    return out


CONTAINER_CHECKS = {
    "rampart-no-privileged": check_not_privileged,
    "rampart-capabilities": check_capabilities,
    "rampart-published-ports": check_published_ports,
    "rampart-no-secrets": check_no_secrets,
    "rampart-mounts": check_mounts,
    "rampart-operability": check_operability,
}


# ---- networks -----------------------------------------------------------------------------------

def check_network(props: Mapping[str, Any], external_zones: Iterable[str] | None = None) -> list[str]:
    """Zones are internal unless external; each network has a fixed subnet (the topology's address plan).

    ``external_zones``: the topology's external zones when known; otherwise the network's own
    ``rampart.external`` label is trusted."""
    labels = labels_of(props)
    zone = labels.get("rampart.zone")
    out = []
    if zone is None:
        out.append("network has no rampart.zone label: every network must be a zone of the topology")
    external = zone in set(external_zones) if external_zones is not None \
        else labels.get("rampart.external") == "true"
    if not external and not props.get("internal"):
        out.append(f"network of zone {zone!r} is not internal: only external zones may reach outside; "
                   "egress goes through the gateway")
    configs = props.get("ipamConfigs") or []
    if not configs or not all(c.get("subnet") and c.get("gateway") for c in configs):
        out.append("network has no fixed subnet and gateway: Docker would choose addresses itself")
    return out


# ---- the whole stack ----------------------------------------------------------------------------

def check_segmentation(resources: Iterable[tuple[str, Mapping[str, Any]]],
                       topology: Any | None = None) -> list[str]:
    """Each container is attached only to the networks of its own zones, at its topology address.

    ``resources``: (type, props) pairs. ``topology``: a ``rampart.topology.Topology`` when available;
    otherwise each container's ``rampart.zones`` label is the expectation."""
    resources = list(resources)
    zone_of: dict[str, str] = {}
    subnet_of: dict[str, ipaddress.IPv4Network] = {}
    for typ, props in resources:
        if typ == NETWORK and props.get("name"):
            zone = labels_of(props).get("rampart.zone")
            if zone:
                zone_of[props["name"]] = zone
                for c in props.get("ipamConfigs") or []:
                    if c.get("subnet"):
                        subnet_of[props["name"]] = ipaddress.IPv4Network(c["subnet"])
    out = []
    for typ, props in resources:
        if typ != CONTAINER:
            continue
        labels = labels_of(props)
        host = labels.get("rampart.host") or props.get("name") or "?"
        attached: dict[str, str | None] = {}
        for net in props.get("networksAdvanced") or []:
            name = net.get("name")
            if name not in zone_of:
                out.append(f"{host}: attached to {name!r}, which is not a zone network of this stack")
                continue
            attached[zone_of[name]] = net.get("ipv4Address")
            addr = net.get("ipv4Address")
            if not addr:
                out.append(f"{host}: no static address on {name!r}")
            elif name in subnet_of and ipaddress.IPv4Address(addr) not in subnet_of[name]:
                out.append(f"{host}: address {addr} is outside {name!r} ({subnet_of[name]})")
        if props.get("networkMode") not in (None, "", "bridge") and not attached:
            out.append(f"{host}: network mode {props.get('networkMode')!r} bypasses the zone networks")
        if topology is not None and host in topology.hosts:
            h = topology.hosts[host]
            want = {z: str(a) for z, a in h.addresses.items() if not topology.zones[z].vpn}
        else:
            want = {z: None for z in (labels.get("rampart.zones") or "").split(",") if z}
        for zone in sorted(set(attached) - set(want)):
            out.append(f"{host}: attached to zone {zone!r}, which is not one of its zones")
        for zone in sorted(set(want) - set(attached)):
            out.append(f"{host}: missing from its zone {zone!r}")
        for zone, addr in sorted(want.items()):
            if addr and zone in attached and attached[zone] != addr:
                out.append(f"{host}: has {attached[zone]} in zone {zone!r}, the topology says {addr}")
    return out
