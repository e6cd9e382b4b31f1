#!/bin/bash
# Prepare this machine for the lab and the tests: Debian packages and the project's virtualenv.
# Idempotent and quiet when there is nothing to do. Run by `make lab` / `make test` (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }

# Controller packages (Debian bookworm): the lab (its apt proxy, its time source), VPN keys (wg on the controller)
# the bot tests' PostgreSQL, and python3-psycopg2 (the postgres role's objects run as the postgres user with
# the system python in tests/unit/test_data_postgres.py, as on a Debian host).
# Always without recommends (wireguard-tools would pull a 107 MB kernel).
APT_PACKAGES=(python3-venv debootstrap systemd-container apt-cacher-ng nftables iproute2 openssh-client
              wireguard-tools postgresql python3-psycopg2 chrony
              prometheus prometheus-alertmanager prometheus-node-exporter prometheus-blackbox-exporter
              prometheus-postgres-exporter systemd-journal-remote conntrack aide restic openssh-server
              openssh-sftp-server)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]} — run as root (sudo make …) or install them" >&2
    exit 2
  fi
  say "installing Debian packages: ${missing[*]}"
  # Package services (apt-cacher-ng, postgresql, prometheus) must not start on the controller: the lab
  # and the tests run their own instances on their own addresses.
  guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    guard=/usr/sbin/policy-rc.d
  fi
  trap '[ -n "$guard" ] && rm -f "$guard"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || say "apt-get update failed; trying with the current package lists"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The project's virtualenv, pinned by requirements.lock; rebuilt when the pins change.
stamp=.venv/.rampart-setup
want=$(cat requirements.lock pyproject.toml bot/pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "building the Python environment in .venv (pinned by requirements.lock; first run ~2 min)"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip==25.3 2>/dev/null || true
  extras=(-e ".[dev]")
  [ -f bot/pyproject.toml ] && extras+=(-e "bot[test]")
  # (the filter hides pip notices about this machine's local package index that are not errors)
  .venv/bin/pip install -q -c requirements.lock "${extras[@]}" 2> >(grep -v "^WARNING: Location" >&2)
  echo "$want" > "$stamp"
fi
say "ready"
