#!/bin/bash
# `make bench`: print the figures the issues ask for. Benchmarks, not tests: nothing here fails on speed.
set -euo pipefail
cd "$(dirname "$0")/.."
# A lab's eight hosts keep working in the background (a tenth of this machine's CPU): the bot's figures are taken
# without one. The lab benchmark below builds its own.
.venv/bin/rampart --env "${ENV:-lab}" lab down
if [ -f bot/bench/run.py ]; then
  echo "== bot benchmark (loopback only)"
  .venv/bin/python bot/bench/run.py
fi
echo "== topology validation benchmark (a generated 1000-host topology; no lab needed)"
.venv/bin/python -m rampart.bench topology 1000
echo "== lab benchmark (tears down any running lab, builds one, converges twice, tears it down)"
.venv/bin/python -m rampart.bench "${ENV:-lab}"
