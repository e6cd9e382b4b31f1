#!/bin/bash
# The lab tier: build the lab, converge, prove idempotence, run the lab suites, and always tear down.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
ENV=${ENV:-lab}
logdir=$(mktemp -d)
keep=${KEEP_LAB:-0}

cleanup() {
  rc=$?
  if [ "$keep" = 1 ]; then echo "== KEEP_LAB=1: leaving the lab up"; else echo "== lab down"; $BIN/rampart --env "$ENV" lab down || true; fi
  rm -rf "$logdir"
  exit $rc
}
trap cleanup EXIT

# The tier tests a first converge on fresh hosts, so it starts from none: a lab already on this machine (this
# checkout's or another's, whose hosts keep that checkout's keys and secrets) is removed first.
echo "== lab down (any lab already on this machine; the tier builds its own)"
$BIN/rampart --env "$ENV" lab down
echo "== lab up"
$BIN/rampart --env "$ENV" lab up
[ "$ENV" != lab ] || $BIN/python scripts/bootstrap-secrets.py --env "$ENV"
play() { $BIN/ansible-playbook -i "inventory/$ENV" --vault-id "$ENV@scripts/vault-pass-client.py" "$@"; }

echo "== converge (first)"
t0=$SECONDS
play playbooks/site.yml | tee "$logdir/first.log" | grep -E '^(PLAY RECAP|\S+ +: ok=)' || true
grep -q 'PLAY RECAP' "$logdir/first.log" || { cat "$logdir/first.log"; echo "converge did not run"; exit 1; }
grep -qE 'failed=[1-9]|unreachable=[1-9]' "$logdir/first.log" && { cat "$logdir/first.log"; echo "converge failed"; exit 1; }
echo "first converge: $((SECONDS - t0)) s"

echo "== converge (second: must change nothing)"
t0=$SECONDS
play playbooks/site.yml > "$logdir/second.log" || { cat "$logdir/second.log"; exit 1; }
grep -E '^\S+ +: ok=' "$logdir/second.log"
if grep -qE 'changed=[1-9]|failed=[1-9]' "$logdir/second.log"; then
  grep -B3 -E '^changed:' "$logdir/second.log" | head -60
  echo "idempotence: the second converge changed something"; exit 1
fi
echo "idempotence: ok (changed=0 on every host); no-op converge: $((SECONDS - t0)) s"

status=0
echo "== smoke (tests/lab)"
scripts/pytest.sh tests/lab || status=1
echo "== compliance (tests/compliance; JUnit XML in build/compliance.xml)"
scripts/pytest.sh tests/compliance || status=1
echo "== segmentation (tests/segmentation: the zone-to-zone matrix with real packets, the admin path)"
scripts/pytest.sh -s tests/segmentation || status=1
# Last: they inject real faults (a killed bot, a rebooted host, a destroyed database) and check the recovery.
echo "== recovery drills a-d (issue 12; all six: make drill); report in build/drills.md"
for drill in a b c d; do
  $BIN/rampart --env "$ENV" drill "$drill" > "$logdir/drill-$drill.log" 2>&1 || { cat "$logdir/drill-$drill.log"; status=1; }
  tail -n 1 "$logdir/drill-$drill.log"
done
[ ! -f build/drills.md ] || cat build/drills.md
exit $status
