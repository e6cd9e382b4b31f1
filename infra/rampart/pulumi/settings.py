"""Typed stack configuration for the Docker backend.

Every key lives in the ``rampart`` namespace (``pulumi config set rampart:<key> ...``). Parsing is pure so it
is unit-tested without an engine; a wrong, missing or unknown key is a :class:`ConfigError` whose message
names the key, which the program turns into a one-line preview failure.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

NAMESPACE = "rampart"
RESTART_POLICIES = ("no", "always", "unless-stopped", "on-failure")
CGROUP_MODES = ("delegate", "runtime")
DEFAULT_IMAGE = "rampart/host:bookworm"
DEFAULT_IMAGE_CONTEXT = "infra/images/host"
# docker0's default pool: a zone on it would collide with the default bridge on most Docker hosts.
DEFAULT_RESERVED = ("172.17.0.0/16",)

# key → one-line description; the single list of what a stack may set (anything else is a typo).
KEYS = {
    "topology": "path of the topology file, relative to the project root (required)",
    "dockerHost": "Docker daemon: unix:///var/run/docker.sock or ssh://user@host[:port] (required)",
    "dockerSshOpts": "extra ssh options for an ssh:// Docker host (list of strings)",
    "sshPublicKeyFile": "public key installed for sshUser, read on the machine running pulumi (required)",
    "sshUser": "account Ansible logs in as (default: ansible)",
    "image": "host image: {name, build, context, platform}",
    "restartPolicy": f"container restart policy: {', '.join(RESTART_POLICIES)} (default: unless-stopped)",
    "systemdCgroup": "how systemd gets a writable cgroup: delegate (default) or runtime",
    "containerRuntime": "OCI runtime giving systemd a writable cgroupfs (required if systemdCgroup=runtime)",
    "reservedSubnets": "subnets already in use on the Docker host (default: [172.17.0.0/16])",
    "dataDirs": "extra data directories per role, as {role: [path, ...]}; each becomes a named volume",
    "keepData": "keep data volumes when the stack is destroyed (default: true)",
    "wireguardBindAddress": "host address the WireGuard port is published on (default: 0.0.0.0)",
}
IMAGE_KEYS = ("name", "build", "context", "platform")
# A volume over one of these would hide the image's own files (or systemd's mounts).
SYSTEM_PATHS = ("", "/etc", "/usr", "/run", "/tmp", "/var", "/sys/fs/cgroup")  # noqa: S108


class ConfigError(ValueError):
    """A stack setting that cannot be used. The message starts with the full key, e.g. ``rampart:image``."""

    def __init__(self, key: str, problem: str):
        self.key, self.problem = f"{NAMESPACE}:{key}", problem
        super().__init__(f"{self.key}: {problem}")


@dataclass(frozen=True)
class ImageSettings:
    name: str = DEFAULT_IMAGE
    build: bool = True  # False: use an image already present on the Docker host (or pullable)
    context: Path = Path(DEFAULT_IMAGE_CONTEXT)
    platform: str | None = None


@dataclass(frozen=True)
class Settings:
    topology: Path
    docker_host: str
    ssh_public_key: str
    ssh_user: str = "ansible"
    docker_ssh_opts: tuple[str, ...] = ()
    image: ImageSettings = field(default_factory=ImageSettings)
    restart_policy: str = "unless-stopped"
    systemd_cgroup: str = "delegate"
    container_runtime: str | None = None
    reserved_subnets: tuple[ipaddress.IPv4Network, ...] = tuple(map(ipaddress.IPv4Network, DEFAULT_RESERVED))
    data_dirs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    keep_data: bool = True
    wireguard_bind_address: str = "0.0.0.0"  # noqa: S104 - a VPN endpoint must be reachable from outside


def _decode(key: str, raw: Any) -> Any:
    """Structured values arrive from the engine as JSON text; plain strings stay strings."""
    if isinstance(raw, str):
        text = raw.strip()
        if text[:1] in ("{", "[") or text in ("true", "false"):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(key, f"not valid JSON: {exc.msg}") from None
    return raw


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"expected a non-empty string, got {value!r}")
    return value.strip()


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(key, f"expected true or false, got {value!r}")


def _strings(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(key, f"expected a list of strings, got {value!r}")
    return tuple(value)


def _docker_host(value: Any) -> str:
    url = _string("dockerHost", value)
    parts = urlsplit(url)
    # tcp:// without TLS would hand root on the Docker host to anyone on the path, so only these two.
    if parts.scheme == "unix" and parts.path:
        return url
    if parts.scheme == "ssh" and parts.hostname:
        return url
    raise ConfigError("dockerHost", f"{url!r}: use unix:///path/to/docker.sock or ssh://user@host[:port]")


def _image(value: Any, root: Path) -> ImageSettings:
    if not isinstance(value, dict):
        raise ConfigError("image", f"expected a mapping with keys {', '.join(IMAGE_KEYS)}, got {value!r}")
    for k in value:
        if k not in IMAGE_KEYS:
            raise ConfigError(f"image.{k}", f"unknown key (allowed: {', '.join(IMAGE_KEYS)})")
    name = _string("image.name", value.get("name", DEFAULT_IMAGE))
    build = _bool("image.build", value.get("build", True))
    context = root / _string("image.context", value.get("context", DEFAULT_IMAGE_CONTEXT))
    if build and not (context / "Dockerfile").is_file():
        raise ConfigError("image.context", f"{context} has no Dockerfile")
    platform = value.get("platform")
    return ImageSettings(name, build, context, _string("image.platform", platform) if platform else None)


def _data_dirs(value: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise ConfigError("dataDirs", f"expected a mapping of role to a list of paths, got {value!r}")
    out = {}
    for role, paths in value.items():
        paths = _strings(f"dataDirs.{role}", paths)
        for p in paths:
            if not p.startswith("/") or p.rstrip("/") in SYSTEM_PATHS:
                raise ConfigError(f"dataDirs.{role}", f"{p!r}: not an absolute data directory")
        out[str(role)] = paths
    return out


def parse(raw: Mapping[str, Any], root: Path) -> Settings:
    """Check a stack's ``rampart:*`` config (keys without the namespace) and build :class:`Settings`.

    ``root`` is the project root: relative paths in the config are taken from there."""
    for key in raw:
        if key not in KEYS:
            raise ConfigError(key, f"unknown setting (known: {', '.join(sorted(KEYS))})")
    values = {k: _decode(k, v) for k, v in raw.items()}
    for key in ("topology", "dockerHost", "sshPublicKeyFile"):
        if values.get(key) in (None, ""):
            raise ConfigError(key, f"missing required setting: {KEYS[key]}")

    topology = root / _string("topology", values["topology"])
    if not topology.is_file():
        raise ConfigError("topology", f"{topology} does not exist")

    key_file = Path(_string("sshPublicKeyFile", values["sshPublicKeyFile"])).expanduser()
    key_file = key_file if key_file.is_absolute() else root / key_file
    try:
        public_key = key_file.read_text().strip()
    except OSError as exc:
        raise ConfigError("sshPublicKeyFile", f"cannot read {key_file}: {exc.strerror}") from None
    # A private key here would be uploaded into every container: refuse anything but a public key line.
    if "PRIVATE KEY" in public_key or not public_key.startswith(("ssh-", "ecdsa-", "sk-")):
        raise ConfigError("sshPublicKeyFile", f"{key_file} does not hold an OpenSSH public key")

    user = _string("sshUser", values.get("sshUser", "ansible"))
    if user == "root" or not user.replace("-", "").replace("_", "").isalnum():
        raise ConfigError("sshUser", f"{user!r}: use a non-root account name (letters, digits, '-', '_')")

    restart = _string("restartPolicy", values.get("restartPolicy", "unless-stopped"))
    if restart not in RESTART_POLICIES:
        raise ConfigError("restartPolicy", f"{restart!r}: expected one of {', '.join(RESTART_POLICIES)}")

    cgroup = _string("systemdCgroup", values.get("systemdCgroup", "delegate"))
    if cgroup not in CGROUP_MODES:
        raise ConfigError("systemdCgroup", f"{cgroup!r}: expected one of {', '.join(CGROUP_MODES)}")
    runtime = values.get("containerRuntime")
    runtime = _string("containerRuntime", runtime) if runtime is not None else None
    if cgroup == "runtime" and not runtime:
        raise ConfigError("containerRuntime", "required when systemdCgroup is runtime (e.g. sysbox-runc)")

    reserved = []
    for i, s in enumerate(_strings("reservedSubnets", values.get("reservedSubnets", list(DEFAULT_RESERVED)))):
        try:
            reserved.append(ipaddress.IPv4Network(s, strict=True))
        except ValueError as exc:
            raise ConfigError(f"reservedSubnets[{i}]", str(exc)) from None

    bind = _string("wireguardBindAddress", values.get("wireguardBindAddress", "0.0.0.0"))  # noqa: S104
    try:
        ipaddress.IPv4Address(bind)
    except ValueError as exc:
        raise ConfigError("wireguardBindAddress", str(exc)) from None

    return Settings(
        topology=topology,
        docker_host=_docker_host(values["dockerHost"]),
        ssh_public_key=public_key,
        ssh_user=user,
        docker_ssh_opts=_strings("dockerSshOpts", values.get("dockerSshOpts", [])),
        image=_image(values.get("image", {}), root),
        restart_policy=restart,
        systemd_cgroup=cgroup,
        container_runtime=runtime,
        reserved_subnets=tuple(reserved),
        data_dirs=_data_dirs(values.get("dataDirs", {})),
        keep_data=_bool("keepData", values.get("keepData", True)),
        wireguard_bind_address=bind,
    )
