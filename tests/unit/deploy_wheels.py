"""Tiny offline wheels and projects for the release tests (no package index: the network rule allows loopback only).

`make_wheel` writes a valid PEP 427 wheel by hand; `make_project` makes a project whose in-tree PEP 517 backend
(`backend-path`, no build requirements) writes its wheel the same way, so `pip wheel` builds it offline."""

from __future__ import annotations

import hashlib
from pathlib import Path

# The same writer serves as the in-tree backend of generated projects (the file is copied into them).
WRITER = '''
import base64, hashlib, zipfile

def write_wheel(directory, name, version, files, requires=(), scripts=None):
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    meta = [f"Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    content = dict(files)
    content[f"{info}/METADATA"] = "\\n".join(meta) + "\\n"
    content[f"{info}/WHEEL"] = ("Wheel-Version: 1.0\\nGenerator: rampart-test\\nRoot-Is-Purelib: true\\n"
                                "Tag: py3-none-any\\n")
    if scripts:
        content[f"{info}/entry_points.txt"] = "[console_scripts]\\n" + "".join(
            f"{k} = {v}\\n" for k, v in sorted(scripts.items()))
    record = []
    for path, text in sorted(content.items()):
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    content[f"{info}/RECORD"] = "\\n".join(record) + "\\n"
    target = f"{directory}/{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, text in sorted(content.items()):
            info_ = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            info_.external_attr = 0o644 << 16
            zf.writestr(info_, text)
    return target
'''

BACKEND = WRITER + '''
import tomllib

def _project():
    with open("pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]

def get_requires_for_build_wheel(config_settings=None):
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    import os
    p = _project()
    files = {}
    for root, _, names in os.walk("src"):
        for n in sorted(names):
            if n.endswith(".py"):
                path = os.path.join(root, n)
                files[os.path.relpath(path, "src")] = open(path).read()
    scripts = p.get("scripts", {})
    return os.path.basename(write_wheel(wheel_directory, p["name"], p["version"], files,
                                        p.get("dependencies", []), scripts))
'''

_ns: dict = {}
exec(WRITER, _ns)  # noqa: S102 - our own constant source, shared with the generated backend


def make_wheel(directory: Path, name: str, version: str, files: dict[str, str] | None = None,
               requires: tuple[str, ...] = ()) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    module = name.replace("-", "_")
    files = files or {f"{module}/__init__.py": f"VERSION = {version!r}\n"}
    return Path(_ns["write_wheel"](str(directory), name, version, files, requires))


def make_project(root: Path, name: str = "tinyapp", version: str = "1.0.0", deps: tuple[str, ...] = (),
                 main: str = "def main():\n    print('tinyapp ok')\n    return 0\n") -> Path:
    """A project with an in-tree backend and a console script `<name>` -> <module>.cli:main."""
    module = name.replace("-", "_")
    (root / "src" / module).mkdir(parents=True, exist_ok=True)
    (root / "src" / module / "__init__.py").write_text("")
    (root / "src" / module / "cli.py").write_text(main)
    (root / "backend").mkdir(exist_ok=True)
    (root / "backend" / "tinybackend.py").write_text(BACKEND)
    dep_list = ", ".join(f'"{d}"' for d in deps)
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "tinybackend"\nbackend-path = ["backend"]\n\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\ndependencies = [{dep_list}]\n\n'
        f'[project.scripts]\n{name} = "{module}.cli:main"\n')
    return root


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
