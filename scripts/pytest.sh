#!/bin/bash
# pytest over the given paths that exist; exit code 5 ("no tests collected") is not a failure here,
# every other non-zero code is. Paths are relative to the current directory.
set -uo pipefail
venv=$(cd "$(dirname "$0")/.." && pwd)/.venv
paths=() opts=()
for p in "$@"; do
  case $p in -*) opts+=("$p") ;; *) [ -e "$p" ] && paths+=("$p") ;; esac
done
[ ${#paths[@]} -eq 0 ] && { echo "pytest: nothing to run"; exit 0; }
"$venv/bin/python" -m pytest -q -p no:cacheprovider "${opts[@]}" "${paths[@]}"
rc=$?
[ $rc -eq 5 ] && { echo "pytest: no tests collected in ${paths[*]}"; exit 0; }
exit $rc
