"""Controller-side release build: a Python project's wheel plus a wheelhouse of its pinned dependencies.

Hosts in internal zones have no package registry, so everything they install is built here and shipped as one
deterministic tar:

    MANIFEST.json      name, version, release id, the Python (major.minor) and machine it was built for
    requirements.txt   every distribution, `name==version --hash=sha256:...` (the project's own wheel included)
    wheels/*.whl       the project's wheel and every dependency wheel (binary only, never an sdist)

Hosts install it with `pip install --no-index --find-links wheels --require-hashes -r requirements.txt`, so a
wheel that changed on the way is refused by the host's pip as well as by `verify`.

The dependency set comes from a lock file (`python -m rampart.release lock`) holding one sha256 per wheel;
the project's direct pins must agree with it, or the build stops naming the package. Builds are cached under
`--out`: the same sources and lock give the same release id without running pip again (`cached: true`), and
a rebuild from scratch gives the same bytes (the wheel is built with a fixed SOURCE_DATE_EPOCH and the tar
has fixed owners, modes and times).

CLI (one JSON line on success; one `rampart-release: ...` line and exit 2 on an error an operator can fix):

    python -m rampart.release build --project bot --lock requirements-bot.lock --out build/release
    python -m rampart.release lock --project bot --lock requirements-bot.lock
    python -m rampart.release verify build/release/rampart-bot/<id>
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

FORMAT = 1
# zip (wheels) cannot store times before 1980; a fixed time makes the project's wheel byte-for-byte stable.
SOURCE_DATE_EPOCH = "315532800"
# Never part of the wheel: skipping them keeps an unrelated change (a test, a cache) from making a new build.
SKIP_DIRS = {"tests", "bench", "build", "dist", ".venv", "venv", "__pycache__", ".pytest_cache", ".ruff_cache",
             ".hypothesis", ".mypy_cache", ".git"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".sqlite3", ".egg-info")

_PIN_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*==\s*([A-Za-z0-9.+!_-]+)\s*(;.*)?$")
_LOCK_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})+)$")
_HASH_RE = re.compile(r"--hash=sha256:([0-9a-f]{64})")


class ReleaseError(Exception):
    """One line an operator can act on (names the file, package or command at fault)."""


def normalize(name: str) -> str:
    """PEP 503 name normalization (Foo_bar, foo-bar and foo.bar are the same project)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wheel_name_version(filename: str) -> tuple[str, str]:
    """(normalized name, version) from a wheel file name (PEP 427)."""
    parts = filename[:-4].split("-") if filename.endswith(".whl") else []
    if len(parts) not in (5, 6):
        raise ReleaseError(f"{filename}: not a wheel file name")
    return normalize(parts[0]), parts[1]


# --- the project ----------------------------------------------------------------------------------------------

def read_project(project: Path) -> tuple[str, dict[str, str]]:
    """The project's name and its direct dependencies as {normalized name: pinned version}."""
    path = project / "pyproject.toml"
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ReleaseError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ReleaseError(f"{path}: invalid TOML: {exc}") from None
    meta = data.get("project")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise ReleaseError(f"{path}: [project].name missing")
    pins: dict[str, str] = {}
    for i, spec in enumerate(meta.get("dependencies", [])):
        match = _PIN_RE.match(spec) if isinstance(spec, str) else None
        if not match:
            raise ReleaseError(f"{path}: project.dependencies[{i}] {spec!r} is not pinned with ==")
        pins[normalize(match.group(1))] = match.group(3)
    return meta["name"], pins


def source_digest(project: Path) -> str:
    """sha256 over every file that can reach the wheel (relative path and bytes, in a fixed order)."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(project):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(SKIP_SUFFIXES))
        for name in sorted(files):
            if name.endswith(SKIP_SUFFIXES):
                continue
            path = Path(root) / name
            rel = path.relative_to(project).as_posix()
            digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


# --- the lock -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Locked:
    name: str  # as written in the lock
    version: str
    sha256: str


def parse_lock(path: Path) -> dict[str, Locked]:
    """{normalized name: Locked} from a lock file; continuation lines (backslash) are joined."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ReleaseError(f"{path}: cannot read lock file: {exc.strerror}") from None
    entries: dict[str, Locked] = {}
    logical: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].rstrip()
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        if pending.strip():
            logical.append((start, " ".join(pending.split())))
        pending = ""
    for number, line in logical:
        match = _LOCK_RE.match(line)
        if not match:
            raise ReleaseError(f"{path}:{number}: expected `name==version --hash=sha256:<64 hex>`, got {line[:80]!r}")
        hashes = _HASH_RE.findall(match.group(3))
        if len(hashes) != 1:
            raise ReleaseError(f"{path}:{number}: {match.group(1)}: exactly one hash per wheel expected")
        key = normalize(match.group(1))
        if key in entries:
            raise ReleaseError(f"{path}:{number}: {match.group(1)} listed twice")
        entries[key] = Locked(match.group(1), match.group(2), hashes[0])
    if not entries:
        raise ReleaseError(f"{path}: lock file lists no packages")
    return entries


def check_lock(project: Path, lock: Path) -> dict[str, Locked]:
    """The lock, after checking that every direct pin of the project is in it at the same version."""
    name, pins = read_project(project)
    entries = parse_lock(lock)
    if normalize(name) in entries:
        raise ReleaseError(f"{lock}: lists the project {name} itself (it is built, not locked)")
    for dep, version in sorted(pins.items()):
        locked = entries.get(dep)
        if locked is None:
            raise ReleaseError(f"{lock}: {dep}=={version} (from {project}/pyproject.toml) is not locked; "
                               f"run `python -m rampart.release lock`")
        if locked.version != version:
            raise ReleaseError(f"{lock}: {dep} is locked at {locked.version} but {project}/pyproject.toml pins "
                               f"{version}; run `python -m rampart.release lock`")
    return entries


def _pip(python: str, args: Sequence[str], what: str, env: dict[str, str] | None = None) -> None:
    command = [python, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        lines = [ln.strip() for ln in (result.stderr or result.stdout).splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit {result.returncode}"
        if any("DO NOT MATCH THE HASHES" in ln for ln in lines):
            # pip's report spans lines: name the package and both hashes in one.
            pkg = next((ln.split(" from ")[0] for ln in lines if "==" in ln and " from " in ln), "a wheel")
            expected = next((ln.split()[-1][:16] for ln in lines if ln.startswith("Expected sha256")), "?")
            got = next((ln.split()[-1][:16] for ln in lines if ln.startswith("Got")), "?")
            reason = f"{pkg} does not match its locked hash (expected {expected}…, got {got}…)"
        raise ReleaseError(f"{what} failed: {reason[:300]}")


def _source_args(find_links: Iterable[Path], index_url: str | None, no_index: bool) -> list[str]:
    args: list[str] = []
    for link in find_links:
        args += ["--find-links", str(link)]
    if no_index:
        args.append("--no-index")
    elif index_url:
        args += ["--index-url", index_url]
    return args


def write_lock(project: Path, lock: Path, *, python: str = sys.executable, find_links: Iterable[Path] = (),
               index_url: str | None = None, no_index: bool = False) -> dict[str, Locked]:
    """Resolve the project's pinned dependencies (binary wheels for this Python) and write them with hashes."""
    name, pins = read_project(project)
    spec = _project_dependencies(project)
    with tempfile.TemporaryDirectory(prefix="rampart-lock-") as tmp:
        req = Path(tmp) / "direct.txt"
        req.write_text("\n".join(spec) + "\n")
        _pip(python, ["download", "--only-binary=:all:", "--no-cache-dir", "-d", str(Path(tmp) / "w"), "-r",
                      str(req), *_source_args(find_links, index_url, no_index)], f"resolving {name}'s dependencies")
        wheels = sorted((Path(tmp) / "w").glob("*.whl"))
        entries: dict[str, Locked] = {}
        for wheel in wheels:
            dep, version = wheel_name_version(wheel.name)
            entries[dep] = Locked(dep, version, sha256_file(wheel))
    missing = sorted(set(pins) - set(entries))
    if missing:
        raise ReleaseError(f"resolving {name}'s dependencies: no wheel for {', '.join(missing)}")
    lines = [f"# Release lock for {name} (binary wheels for Python {_py()} on {platform.machine()}), with hashes.",
             "# Generated by `python -m rampart.release lock`; the project's direct pins must match it.",
             *(f"{e.name}=={e.version} \\\n    --hash=sha256:{e.sha256}" for _, e in sorted(entries.items()))]
    lock.write_text("\n".join(lines) + "\n")
    return entries


def _project_dependencies(project: Path) -> list[str]:
    data = tomllib.loads((project / "pyproject.toml").read_text())
    return [str(d) for d in data["project"].get("dependencies", [])]


def _py() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


# --- the wheelhouse -------------------------------------------------------------------------------------------

def fetch_wheelhouse(entries: dict[str, Locked], lock: Path, wheelhouse: Path, *, python: str = sys.executable,
                     find_links: Iterable[Path] = (), index_url: str | None = None,
                     no_index: bool = False) -> dict[str, Path]:
    """{normalized name: wheel path} for every locked package: from the cache when its hash matches, else
    downloaded (pip checks every hash); a cached wheel that no longer matches its hash is discarded."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    by_hash: dict[str, Path] = {}
    for wheel in wheelhouse.glob("*.whl"):
        by_hash[sha256_file(wheel)] = wheel
    found = {key: by_hash[e.sha256] for key, e in entries.items() if e.sha256 in by_hash}
    missing = {key: e for key, e in entries.items() if key not in found}
    if missing:
        # A file of the right name but the wrong bytes (truncated, tampered) must not shadow the real one.
        for wheel in wheelhouse.glob("*.whl"):
            if wheel not in found.values() and wheel_name_version(wheel.name)[0] in missing:
                wheel.unlink()
        with tempfile.TemporaryDirectory(prefix="rampart-wheels-", dir=wheelhouse.parent) as tmp:
            req = Path(tmp) / "missing.txt"
            req.write_text("".join(f"{e.name}=={e.version} --hash=sha256:{e.sha256}\n" for e in missing.values()))
            _pip(python, ["download", "--require-hashes", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
                          "-d", str(Path(tmp) / "w"), "-r", str(req), *_source_args(find_links, index_url, no_index)],
                 f"fetching the wheels locked in {lock}")
            for wheel in sorted((Path(tmp) / "w").glob("*.whl")):
                target = wheelhouse / wheel.name
                shutil.move(str(wheel), target)
                found[wheel_name_version(wheel.name)[0]] = target
    for key, e in entries.items():
        if key not in found or sha256_file(found[key]) != e.sha256:
            raise ReleaseError(f"{lock}: no wheel of {e.name}=={e.version} with the locked hash")
    return found


def build_wheel(project: Path, dest: Path, *, python: str = sys.executable, build_isolation: bool = True,
                find_links: Iterable[Path] = (), index_url: str | None = None, no_index: bool = False) -> Path:
    """Build the project's wheel into `dest` (reproducibly: fixed SOURCE_DATE_EPOCH)."""
    dest.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PYTHONHASHSEED": "0"}
    args = ["wheel", "--no-deps", "--no-cache-dir", "-w", str(dest), *_source_args(find_links, index_url, no_index)]
    if not build_isolation:
        args.append("--no-build-isolation")
    _pip(python, [*args, str(project)], f"building the wheel of {project}", env=env)
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ReleaseError(f"building the wheel of {project}: expected one wheel, got {len(wheels)}")
    return wheels[0]


# --- the release ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Release:
    name: str
    version: str
    id: str  # <version>-<12 hex of requirements.txt>
    directory: str
    archive: str
    sha256: str  # of the archive
    python: str
    machine: str
    cached: bool

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _tar(directory: Path, archive: Path) -> None:
    """A byte-for-byte reproducible, uncompressed tar of `directory`'s files (wheels are compressed already)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(path.relative_to(directory).as_posix())
            info.size = path.stat().st_size
            info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, 0o644, 0, 0, "", ""
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    tmp = archive.with_suffix(".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(archive)


def _cache_key(digest: str, lock_bytes: bytes) -> str:
    material = json.dumps([FORMAT, digest, hashlib.sha256(lock_bytes).hexdigest(), _py(), platform.machine()])
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def _cached(index: Path) -> Release | None:
    try:
        data = json.loads(index.read_text())
        release = Release(**{**data, "cached": True})
        archive = Path(release.archive)
        if archive.is_file() and sha256_file(archive) == release.sha256:
            verify_release(Path(release.directory))
            return release
    except (OSError, ValueError, TypeError, ReleaseError):
        pass
    return None  # missing, stale or damaged: rebuild


def build_release(project: Path, lock: Path, out: Path, *, python: str = sys.executable, build_isolation: bool = True,
                  find_links: Iterable[Path] = (), index_url: str | None = None,
                  no_index: bool = False) -> Release:
    """Build (or reuse) the release of `project` under `out/<name>/<id>` and `out/<name>/<name>-<id>.tar`."""
    project, lock, out = project.resolve(), lock.resolve(), out.resolve()
    find_links = [Path(p).resolve() for p in find_links]
    name, _ = read_project(project)
    entries = check_lock(project, lock)
    digest = source_digest(project)
    base = out / normalize(name)
    index = base / "index" / f"{_cache_key(digest, lock.read_bytes())}.json"
    hit = _cached(index)
    if hit is not None:
        return hit

    deps = fetch_wheelhouse(entries, lock, out / "wheelhouse", python=python, find_links=find_links,
                            index_url=index_url, no_index=no_index)
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=base) as tmp:
        stage = Path(tmp) / "release"
        wheels = stage / "wheels"
        wheels.mkdir(parents=True)
        own = build_wheel(project, Path(tmp) / "own", python=python, build_isolation=build_isolation,
                          find_links=find_links, index_url=index_url, no_index=no_index)
        own_name, version = wheel_name_version(own.name)
        if own_name != normalize(name):
            raise ReleaseError(f"building {project}: the wheel is {own.name}, not {name}")
        shutil.copy2(own, wheels / own.name)
        for path in deps.values():
            shutil.copy2(path, wheels / path.name)
        files = {f"wheels/{p.name}": sha256_file(p) for p in sorted(wheels.iterdir())}
        lines = [f"{name}=={version} --hash=sha256:{files['wheels/' + own.name]}"]
        lines += [f"{e.name}=={e.version} --hash=sha256:{e.sha256}" for _, e in sorted(entries.items())]
        requirements = "\n".join(lines) + "\n"
        (stage / "requirements.txt").write_text(requirements)
        release_id = f"{version}-{hashlib.sha256(requirements.encode()).hexdigest()[:12]}"
        manifest = {"format": FORMAT, "name": name, "version": version, "id": release_id, "python": _py(),
                    "machine": platform.machine(), "requirements": "requirements.txt", "files": files}
        (stage / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        directory = base / release_id
        if directory.exists():
            shutil.rmtree(directory)
        stage.rename(directory)
    archive = base / f"{normalize(name)}-{release_id}.tar"
    _tar(directory, archive)
    release = Release(name, version, release_id, str(directory), str(archive), sha256_file(archive), _py(),
                      platform.machine(), cached=False)
    # Beside the archive for the deploy (Ansible reads it), and in the index for the next build.
    side = {**manifest, "archive": str(archive), "sha256": release.sha256, "size": archive.stat().st_size}
    Path(f"{archive}.json").write_text(json.dumps(side, indent=1, sort_keys=True) + "\n")
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text(json.dumps({k: v for k, v in release.as_dict().items() if k != "cached"}, sort_keys=True))
    return release


def verify_release(directory: Path) -> dict[str, object]:
    """Check a release directory: every wheel listed, present and matching its hash, nothing extra."""
    try:
        manifest = json.loads((directory / "MANIFEST.json").read_text())
        requirements = (directory / "requirements.txt").read_text()
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"{directory}: not a release ({exc})") from None
    listed = set(_HASH_RE.findall(requirements))
    present = {p.relative_to(directory).as_posix() for p in (directory / "wheels").glob("*")}
    if present != set(manifest["files"]):
        extra, gone = sorted(present - set(manifest["files"])), sorted(set(manifest["files"]) - present)
        raise ReleaseError(f"{directory}: wheels differ from MANIFEST.json (extra {extra}, missing {gone})")
    for rel, expected in sorted(manifest["files"].items()):
        actual = sha256_file(directory / rel)
        if actual != expected or expected not in listed:
            raise ReleaseError(f"{directory / rel}: sha256 {actual[:16]}… does not match the release's hash")
    return manifest


# --- CLI ------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rampart-release", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for cmd in ("build", "lock"):
        p = sub.add_parser(cmd)
        p.add_argument("--project", type=Path, required=True, help="directory with pyproject.toml")
        p.add_argument("--lock", type=Path, required=True, help="the dependency lock (name==version --hash=…)")
        p.add_argument("--find-links", type=Path, action="append", default=[], help="local wheel directory")
        p.add_argument("--index-url", help="package index (default: pip's configuration)")
        p.add_argument("--no-index", action="store_true", help="use only --find-links")
        p.add_argument("--python", default=sys.executable, help="the Python whose pip builds and downloads")
        if cmd == "build":
            p.add_argument("--out", type=Path, default=Path("build/release"), help="cache and output directory")
            p.add_argument("--no-build-isolation", action="store_true")
    v = sub.add_parser("verify")
    v.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            release = build_release(args.project, args.lock, args.out, python=args.python,
                                    build_isolation=not args.no_build_isolation, find_links=args.find_links,
                                    index_url=args.index_url, no_index=args.no_index)
            print(json.dumps(release.as_dict(), sort_keys=True))
        elif args.cmd == "lock":
            entries = write_lock(args.project, args.lock, python=args.python, find_links=args.find_links,
                                 index_url=args.index_url, no_index=args.no_index)
            print(json.dumps({"lock": str(args.lock), "packages": len(entries)}))
        else:
            manifest = verify_release(args.directory)
            print(json.dumps({"id": manifest["id"], "files": len(manifest["files"]), "ok": True}))
    except ReleaseError as exc:
        print(f"rampart-release: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
