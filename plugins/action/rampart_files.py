"""Ansible action `rampart_files`: many managed files (templates or literal content) in one task.

A no-op converge is bound by the controller's cost per task and host (~0.1 s: a forked worker, the task's
variables, a template/copy action that makes a stat and a file call). A role that writes ten files paid that
ten times. This action renders every file on the controller, asks the host for all their states in one
`rampart_file_state` call, and hands only the files that differ (content, owner, group or mode) to Ansible's
own `copy` action, which writes them atomically and runs `validate`. So the no-op is one round trip, and a
change goes through exactly the code path a template or copy task would take.

    - name: Write the SSH settings
      rampart_files:
        owner: root          # defaults for every entry (root, root)
        group: root
        files:
          - {dest: /etc/systemd/system/ssh.service.d, state: directory, mode: "0755"}
          - {src: sshd_config.j2, dest: /etc/ssh/sshd_config, mode: "0600", validate: /usr/sbin/sshd -t -f %s,
             notify: Reload sshd}           # only a changed file notifies its own handlers
          - {content: "...", dest: /etc/sudoers.d/ops, mode: "0440", validate: visudo -cf %s}
          - {copy: helper.py, dest: /usr/local/sbin/helper, mode: "0755"}    # from the role's files/
          - {dest: /etc/old.conf, state: absent, enabled: "{{ not keep_old }}"}

Entries are applied in order: a directory (made or fixed by the file module) before the files in it.
`enabled: false` leaves an entry out, so a list in vars can carry its own conditions. The handlers of the
changed entries go back in the result's `_ansible_notify`, the key Ansible's strategy reads notifications
from (ansible-core 2.19, pinned); a task-level `notify` would override them and is refused.

Templates render exactly as `ansible.builtin.template` renders them (same search path, same template vars,
trim_blocks), with an entry's own `vars` on top. `backup: true` keeps the old file as copy does. The result
lists `changed_files` and, per dest, the `backup_files` made."""

from __future__ import annotations

import os
import re
import shutil
import tempfile

from ansible import constants as C
from ansible._internal._templating import _template_vars
from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible.template import trust_as_template
from ansible.utils.hashing import checksum_s

FILE_KEYS = {"dest", "src", "copy", "content", "owner", "group", "mode", "validate", "backup", "vars", "notify",
             "enabled", "state"}
# Which keys each state takes besides dest, notify, enabled and state.
STATE_KEYS = {"file": {"src", "copy", "content", "owner", "group", "mode", "validate", "backup", "vars"},
              "directory": {"owner", "group", "mode"},
              "absent": set()}
MODE = re.compile(r"^0?[0-7]{3}$|^[0-7]{4}$")


class ActionModule(ActionBase):
    TRANSFERS_FILES = True
    _VALID_ARGS = frozenset({"files", "owner", "group"})

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        try:
            if self._task.notify:
                raise AnsibleActionFail("notify: set it per file (files[].notify), not on the task")
            specs = self._specs()
            if not specs:  # every file disabled here
                return {**result, "changed": False, "changed_files": [], "backup_files": {}}
            rendered = [(spec, self._render(spec, task_vars) if spec["state"] == "file" else None) for spec in specs]
            state = self._execute_module(module_name="rampart_file_state",
                                         module_args={"paths": [spec["dest"] for spec in specs]},
                                         task_vars=task_vars)
            if state.get("failed"):
                return {**result, **state}
            changed, diffs, notify, backups = [], [], [], {}
            for spec, data in rendered:
                if self._in_place(spec, data, state["files"].get(spec["dest"], {})):
                    continue
                written = self._write(spec, data, task_vars) if spec["state"] == "file" else self._file(spec, task_vars)
                if written.get("failed"):
                    written["msg"] = f"{spec['dest']}: {written.get('msg', 'copy failed')}"
                    return {**result, **written, "changed": bool(changed), "changed_files": changed}
                if written.get("backup_file"):
                    backups[spec["dest"]] = written["backup_file"]
                if written.get("changed"):
                    changed.append(spec["dest"])
                    notify.extend(name for name in spec["notify"] if name not in notify)
                    diff = written.get("diff") or []
                    diffs.extend([diff] if isinstance(diff, dict) else diff)
        except AnsibleActionFail as exc:
            return {**result, "failed": True, "msg": to_text(exc)}
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        result.update(changed=bool(changed), changed_files=changed, backup_files=backups)
        if notify:
            result["_ansible_notify"] = notify
        if diffs:
            result["diff"] = diffs
        return result

    def _specs(self) -> list[dict]:
        """The files, each with its defaults applied and its keys checked (a typo names the file and key)."""
        files = self._task.args.get("files")
        if not isinstance(files, list) or not files:
            raise AnsibleActionFail("files: a non-empty list of {dest, src|content, mode, ...} is required")
        specs = []
        for index, raw in enumerate(files):
            where = f"files[{index}]"
            if not isinstance(raw, dict):
                raise AnsibleActionFail(f"{where}: a mapping is required, got {type(raw).__name__}")
            where = f"files[{index}] ({raw.get('dest', 'no dest')})"
            unknown = sorted(set(raw) - FILE_KEYS)
            if unknown:
                raise AnsibleActionFail(f"{where}: unknown keys {', '.join(unknown)}")
            if not boolean(raw.get("enabled", True), strict=True):
                continue
            notify = raw.get("notify", [])
            notify = [notify] if isinstance(notify, str) else notify
            if not isinstance(notify, list) or not all(isinstance(name, str) for name in notify):
                raise AnsibleActionFail(f"{where}: notify must be a handler name or a list of them")
            if not isinstance(raw.get("dest"), str) or not os.path.isabs(raw["dest"]):
                raise AnsibleActionFail(f"{where}: dest must be an absolute path")
            state = raw.get("state", "file")
            if state not in STATE_KEYS:
                raise AnsibleActionFail(f"{where}: state must be file, directory or absent, got {state!r}")
            extra = sorted(set(raw) - STATE_KEYS[state] - {"dest", "notify", "enabled", "state"})
            if extra:
                raise AnsibleActionFail(f"{where}: {', '.join(extra)} cannot go with state {state}")
            spec = {**raw, "state": state, "notify": notify}
            if state == "absent":
                specs.append(spec)
                continue
            if state == "file" and len({"src", "copy", "content"} & set(raw)) != 1:
                raise AnsibleActionFail(f"{where}: one of src (template), copy (file) or content is required")
            mode = raw.get("mode")
            if not isinstance(raw.get("vars", {}), dict):
                raise AnsibleActionFail(f"{where}: vars must be a mapping (variables for this template only)")
            if not isinstance(mode, str) or not MODE.match(mode):
                raise AnsibleActionFail(f"{where}: mode must be a quoted octal string such as \"0644\", got {mode!r}")
            specs.append({"owner": self._task.args.get("owner", "root"), "group": self._task.args.get("group", "root"),
                          **spec, "mode": f"{int(mode, 8):04o}"})
        dests = [spec["dest"] for spec in specs]
        if len(set(dests)) != len(dests):
            twice = sorted({dest for dest in dests if dests.count(dest) > 1})
            raise AnsibleActionFail(f"files: a dest is listed twice: {', '.join(twice)}")
        return specs

    def _render(self, spec: dict, task_vars: dict) -> bytes:
        """The file's bytes: literal content, a role file as it is, or a template rendered as template does."""
        if "content" in spec:
            return to_bytes(spec["content"], errors="surrogate_or_strict")
        if "copy" in spec:
            try:
                with open(self._find_needle("files", spec["copy"]), "rb") as handle:
                    return handle.read()
            except AnsibleError as exc:
                raise AnsibleActionFail(f"{spec['dest']}: {to_text(exc)}") from None
        try:
            source = self._find_needle("templates", spec["src"])
        except AnsibleError as exc:
            raise AnsibleActionFail(f"{spec['dest']}: {to_text(exc)}") from None
        searchpath = [*task_vars.get("ansible_search_path", []), self._loader._basedir, os.path.dirname(source)]
        searchpath = [entry for path in searchpath for entry in (os.path.join(path, "templates"), path)]
        template_vars = {**task_vars, **spec.get("vars", {})}
        template_vars.update(_template_vars.generate_ansible_template_vars(
            path=spec["src"], fullpath=source, dest_path=spec["dest"],
            include_ansible_managed="ansible_managed" not in template_vars))
        templar = self._templar.copy_with_new_env(searchpath=searchpath, available_variables=template_vars)
        text = templar.template(trust_as_template(self._loader.get_text_file_contents(source)),
                                escape_backslashes=False,
                                overrides={"trim_blocks": True, "lstrip_blocks": False, "newline_sequence": "\n"})
        return to_bytes(text or "", errors="surrogate_or_strict")

    @staticmethod
    def _in_place(spec: dict, data: bytes | None, state: dict) -> bool:
        if spec["state"] == "absent":
            return not state.get("exists", False)
        kind = state.get("regular", False) if spec["state"] == "file" else state.get("directory", False)
        return (kind and (data is None or state.get("checksum") == checksum_s(data))
                and state.get("owner") == spec["owner"] and state.get("group") == spec["group"]
                and state.get("mode") == spec["mode"])

    def _file(self, spec: dict, task_vars: dict) -> dict:
        """A directory or an absent path: Ansible's file module, as a file task would run it."""
        args = {"path": spec["dest"], "state": spec["state"]}
        if spec["state"] == "directory":
            args.update(owner=spec["owner"], group=spec["group"], mode=spec["mode"])
        return self._execute_module(module_name="ansible.legacy.file", module_args=args, task_vars=task_vars)

    def _write(self, spec: dict, data: bytes, task_vars: dict) -> dict:
        """Ansible's copy action does the write: atomic move, validate, diff and check mode as usual."""
        local_dir = tempfile.mkdtemp(dir=C.DEFAULT_LOCAL_TMP)
        try:
            source = os.path.join(local_dir, os.path.basename(spec["dest"]))
            with open(source, "wb") as handle:
                handle.write(data)
            task = self._task.copy()
            copied = ("dest", "owner", "group", "mode", "validate", "backup")
            task.args = {key: spec[key] for key in copied if key in spec}
            task.args["src"] = source
            copy = self._shared_loader_obj.action_loader.get(
                "ansible.legacy.copy", task=task, connection=self._connection, play_context=self._play_context,
                loader=self._loader, templar=self._templar, shared_loader_obj=self._shared_loader_obj)
            return copy.run(task_vars=task_vars)
        finally:
            shutil.rmtree(local_dir, ignore_errors=True)
