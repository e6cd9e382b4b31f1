#!/bin/bash
# Runs one lab host: systemd-nspawn booting its overlay root, restarted when the host reboots.
# Usage: launch.sh HOST ROOT CGROUP LOG CAPS -- VETH:INNER:BRIDGE[:isolated] ...
# Started detached by `rampart lab up`; killing this script's process group stops the host.
set -u
host=$1 root=$2 cgroup=$3 log=$4 caps=$5
shift 5; [ "${1:-}" = "--" ] && shift
legs=("$@")

# Each host boots from its own cgroup, under both hierarchies; without that, the containers' systemds
# collide and units fail at random with 219/CGROUP (measured).
for h in systemd unified; do
  mkdir -p "/sys/fs/cgroup/$h/$cgroup"
  echo $$ > "/sys/fs/cgroup/$h/$cgroup/cgroup.procs"
done
export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1

veth_args=()
for leg in "${legs[@]}"; do
  IFS=: read -r veth inner _ _ <<<"$leg"
  veth_args+=("--network-veth-extra=$veth:$inner")
done
cap_args=()
[ -n "$caps" ] && cap_args=("--capability=$caps")

attach() {  # nspawn creates the host-side veths; plug them into the zone bridges once they exist
  for leg in "${legs[@]}"; do
    IFS=: read -r veth _ bridge flag <<<"$leg"
    for _ in $(seq 1 200); do
      ip link show "$veth" >/dev/null 2>&1 && break
      sleep 0.05
    done
    ip link set "$veth" master "$bridge" up || echo "launch: cannot attach $veth to $bridge" >&2
    # An isolated port reaches only the bridge itself (the controller) and non-isolated ports (the gateway).
    if [ "$flag" = isolated ]; then
      bridge link set dev "$veth" isolated on || echo "launch: cannot isolate $veth on $bridge" >&2
    fi
  done
}

while :; do
  echo "launch: booting $host ($(date -Is))"
  systemd-nspawn --quiet --boot --register=no --keep-unit --machine="$host" --directory="$root" \
    --private-network "${veth_args[@]}" "${cap_args[@]}" \
    --resolv-conf=off --timezone=off --link-journal=no --console=read-only &
  child=$!
  attach
  wait "$child"; rc=$?
  # 133 = the host asked for a reboot: boot it again. Anything else (poweroff, kill) ends the host.
  [ "$rc" -eq 133 ] || { echo "launch: $host exited with $rc"; break; }
done >>"$log" 2>&1
