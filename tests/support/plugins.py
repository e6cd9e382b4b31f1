"""Load one of the repository's Ansible plugin files (plugins/, roles/*/library/) as a module, by path: Ansible
finds them by directory, not as an importable package."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
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


def run_ansible(*args: str, playbook: bool = False) -> tuple[int, dict[str, dict]]:
    """Run `ansible` (a module: args are its command line after the host pattern) or `ansible-playbook` against
    this controller with the json callback. Returns the exit code and localhost's result per task name."""
    tool = Path(sys.executable).with_name("ansible-playbook" if playbook else "ansible")
    command = [str(tool), "-i", "localhost,", "-c", "local", *args] if playbook else [
        str(tool), "localhost", "-i", "localhost,", "-c", "local", *args]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={**os.environ, "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_STDOUT_CALLBACK": "json"})
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    tasks = {}
    for play in report["plays"]:
        for task in play["tasks"]:
            tasks[task["task"]["name"]] = task["hosts"]["localhost"]
    return proc.returncode, tasks
