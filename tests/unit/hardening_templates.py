"""Render the hardening and aide roles' templates offline, with the role defaults (and vars), as Ansible would.

Defaults that are Jinja expressions (the SSH listen address, the router flag …) are resolved against the
given host variables; a test passes only the variables a template needs."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import jinja2
import jinja2.nativetypes
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def role_vars(role: str, **overrides: Any) -> dict[str, Any]:
    """The role's defaults, then vars/main.yml, then `overrides`, with string expressions resolved."""
    values: dict[str, Any] = {}
    for part in ("defaults/main.yml", "vars/main.yml"):
        path = ROOT / "roles" / role / part
        if path.exists():
            values.update(yaml.safe_load(path.read_text()) or {})
    values.update(overrides)
    env = _environment(role, native=True)  # like Ansible: "{{ a_list }}" stays a list
    for _ in range(5):  # expressions may refer to other defaults
        changed = False
        for key, value in values.items():
            if isinstance(value, str) and "{{" in value:
                try:
                    values[key] = env.from_string(value).render(**values)
                except (jinja2.UndefinedError, jinja2.TemplateAssertionError):
                    continue  # needs a variable not given, or an Ansible-only filter: not used by the templates
                changed = True
        if not changed:
            break
    return values


def _environment(role: str, native: bool = False) -> jinja2.Environment:
    cls = jinja2.nativetypes.NativeEnvironment if native else jinja2.Environment
    env = cls(loader=jinja2.FileSystemLoader(ROOT / "roles" / role / "templates"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, autoescape=False)  # noqa: S701 - config files, not HTML
    env.filters["bool"] = _bool
    env.filters["quote"] = lambda s: shlex.quote(str(s))
    env.filters["basename"] = lambda p: Path(p).name
    env.filters["dirname"] = lambda p: str(Path(p).parent)
    env.filters["combine"] = lambda first, *more: {k: v for d in (first, *more) for k, v in d.items()}
    return env


def render(role: str, template: str, **overrides: Any) -> str:
    """Render roles/<role>/templates/<template> with the role's variables and `overrides`."""
    values = role_vars(role, **overrides)
    return _environment(role).get_template(template).render(ansible_managed="test", **values)
