#!/usr/bin/python
"""Ansible module: checksum, owner, group and mode of many paths in one call (read-only).

The `rampart_files` action asks this once per task for all the files it manages, so a converge that changes
nothing costs one module call per host instead of a stat and a file call per file (template/copy)."""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import stat

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: rampart_file_state
short_description: The state of many files at once (sha1, owner, group, mode)
description:
  - For each path, whether it exists, whether it is a regular file or a directory, its owner, group and mode,
    and for a regular file its SHA-1. Symlinks are not followed (a managed path must be the file itself).
    Never changes anything.
options:
  paths:
    description: Absolute paths (C(~user) is expanded, as for any path option).
    type: list
    elements: path
    required: true
  checksum:
    description: Whether to read regular files for their SHA-1 (off for a presence check of key files).
    type: bool
    default: true
"""

RETURN = r"""
files:
  description: >-
    path (as given, C(~) expanded) -> {exists, regular, directory, owner, group, mode ("0644"), size, checksum
    (regular files)}; an absent path has only exists.
  returned: always
  type: dict
"""


def _name(lookup, ident: int) -> str:
    try:
        return lookup(ident)[0]
    except KeyError:  # an id without a name: compare as the number
        return str(ident)


def file_state(path: str, checksum: bool = True) -> dict:
    """What the action compares: content digest and ownership/mode of a regular file."""
    if not os.path.isabs(path):  # an unknown user's home
        return {"exists": False}
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {"exists": False}
    state = {
        "exists": True,
        "regular": stat.S_ISREG(st.st_mode),
        "directory": stat.S_ISDIR(st.st_mode),
        "owner": _name(pwd.getpwuid, st.st_uid),
        "group": _name(grp.getgrgid, st.st_gid),
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "size": st.st_size,
    }
    if state["regular"] and checksum:
        digest = hashlib.sha1(usedforsecurity=False)  # what Ansible's copy compares (checksum_s); not a security use
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 16), b""):
                digest.update(block)
        state["checksum"] = digest.hexdigest()
    return state


def main() -> None:
    module = AnsibleModule(argument_spec={"paths": {"type": "list", "elements": "path", "required": True},
                                          "checksum": {"type": "bool", "default": True}},
                           supports_check_mode=True)
    # "~user/..." that stayed unexpanded names a user this host does not have: nothing is there.
    relative = [p for p in module.params["paths"] if not os.path.isabs(p) and not p.startswith("~")]
    if relative:
        module.fail_json(msg=f"paths must be absolute: {', '.join(relative)}")
    try:
        files = {path: file_state(path, module.params["checksum"]) for path in module.params["paths"]}
    except OSError as exc:
        module.fail_json(msg=f"cannot read {exc.filename}: {exc.strerror}")
    module.exit_json(changed=False, files=files)


if __name__ == "__main__":
    main()
