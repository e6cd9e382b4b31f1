#!/usr/bin/python
"""Ansible module: set several `KEY value` lines in a file the distribution owns (e.g. /etc/login.defs), in one
call, the way a lineinfile per key would (regexp `^#?\\s*KEY\\s`, the last match replaced, else appended), but
with one read, one atomic write and one module call instead of one per key."""

from __future__ import annotations

import os
import re
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: rampart_settings
short_description: Set KEY value lines in a file, all in one call
description:
  - For each key, the last line that sets it (or a commented-out line for it) becomes C(KEY<separator>value);
    a key with no such line is appended. Other lines are kept as they are.
  - The file must exist (it belongs to a package). Owner, group and mode are kept as given.
options:
  path: {description: The file., type: path, required: true}
  settings: {description: Key to value., type: dict, required: true}
  separator: {description: Between key and value., type: str, default: "\t\t"}
  owner: {description: Owner., type: str, default: root}
  group: {description: Group., type: str, default: root}
  mode: {description: Mode, as a quoted octal string., type: raw, default: "0644"}
"""

RETURN = r"""
set:
  description: The keys whose line was changed or added.
  returned: always
  type: list
"""

KEY = re.compile(r"^[A-Za-z0-9_.-]+$")


def apply(text: str, settings: dict[str, str], separator: str) -> tuple[str, list[str]]:
    """The new text and the keys it changed: per key, replace its last line (set or commented) or append."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    changed = []
    for key, value in settings.items():
        wanted = f"{key}{separator}{value}\n"
        pattern = re.compile(rf"^#?\s*{re.escape(key)}\s")
        matches = [index for index, line in enumerate(lines) if pattern.match(line)]
        if matches and lines[matches[-1]] == wanted:
            continue
        if matches:
            lines[matches[-1]] = wanted
        else:
            lines.append(wanted)
        changed.append(key)
    return "".join(lines), changed


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "settings": {"type": "dict", "required": True},
            "separator": {"type": "str", "default": "\t\t"},
            "owner": {"type": "str", "default": "root"},
            "group": {"type": "str", "default": "root"},
            "mode": {"type": "raw", "default": "0644"},
        },
        supports_check_mode=True,
    )
    path = module.params["path"]
    settings = {str(key): str(value) for key, value in module.params["settings"].items()}
    bad = [key for key, value in settings.items() if not KEY.match(key) or "\n" in value]
    if bad:
        module.fail_json(msg=f"{path}: invalid keys or multi-line values: {', '.join(sorted(bad))}")
    try:
        with open(path, encoding="utf-8") as handle:
            before = handle.read()
    except OSError as exc:
        module.fail_json(msg=f"cannot read {path}: {exc.strerror}")
    after, keys = apply(before, settings, module.params["separator"])
    result = {"changed": bool(keys), "set": keys}
    if module._diff and keys:
        result["diff"] = {"before": before, "after": after, "before_header": path, "after_header": path}
    if keys and not module.check_mode:
        fd, temp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".rampart-settings-")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(after)
        module.atomic_move(temp, path)
    file_args = module.load_file_common_arguments(
        {"path": path, "owner": module.params["owner"], "group": module.params["group"], "mode": module.params["mode"]})
    result["changed"] = module.set_fs_attributes_if_different(file_args, result["changed"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
