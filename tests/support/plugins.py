"""Load one of the repository's Ansible plugin files (plugins/, roles/*/library/) as a module, by path: Ansible
finds them by directory, not as an importable package."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_plugin(path: str | Path, name: str | None = None) -> ModuleType:
    """The module at `path` (relative to the repository root, or absolute), loaded under `name`."""
    path = ROOT / path
    spec = importlib.util.spec_from_file_location(name or f"rampart_plugin_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
