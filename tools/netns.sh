#!/usr/bin/env bash
# Two "nodes" on one machine for multi-node tests: network namespaces
# tandem_n0 and tandem_n1 joined by a veth pair,
#
#   tandem_n0: veth_n0 10.77.0.1/24  <->  tandem_n1: veth_n1 10.77.0.2/24
#
# with lo up in both. Usage: tools/netns.sh up|down|status
#   up      create what is missing (idempotent; a half-made setup is completed)
#   down    kill what still runs inside them and remove both namespaces
#           (idempotent; the veth pair goes with them)
#   status  exit 0 when the setup is complete, 1 otherwise
# Needs root and iproute2 (`ip`). Cut the link with
#   ip -n tandem_n1 link set veth_n1 down
# and mend it with `... up`. tests/e2e/netns.cpp uses this script.
set -euo pipefail

readonly NS0=tandem_n0 NS1=tandem_n1
readonly DEV0=veth_n0 DEV1=veth_n1
readonly ADDR0=10.77.0.1/24 ADDR1=10.77.0.2/24

die() {
  echo "netns.sh: $*" >&2
  exit 2
}

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

have_ns() { ip netns list | awk '{print $1}' | grep -qx "$1"; }
have_dev() { ip -n "$1" link show "$2" >/dev/null 2>&1; }

up() {
  for ns in "$NS0" "$NS1"; do
    have_ns "$ns" || ip netns add "$ns"
    ip -n "$ns" link set lo up
  done
  # Either end missing (a half-made pair, or one left in the root
  # namespace by an interrupted `up`): start the pair again.
  if ! have_dev "$NS0" "$DEV0" || ! have_dev "$NS1" "$DEV1"; then
    ip -n "$NS0" link del "$DEV0" 2>/dev/null || true
    ip -n "$NS1" link del "$DEV1" 2>/dev/null || true
    ip link del "$DEV0" 2>/dev/null || true
    ip link del "$DEV1" 2>/dev/null || true
    ip link add "$DEV0" type veth peer name "$DEV1"
    ip link set "$DEV0" netns "$NS0"
    ip link set "$DEV1" netns "$NS1"
  fi
  ip -n "$NS0" addr replace "$ADDR0" dev "$DEV0"
  ip -n "$NS1" addr replace "$ADDR1" dev "$DEV1"
  ip -n "$NS0" link set "$DEV0" up
  ip -n "$NS1" link set "$DEV1" up
}

down() {
  for ns in "$NS0" "$NS1"; do
    have_ns "$ns" || continue
    # A namespace outlives `ip netns del` while a process is inside it:
    # whatever a test left running there goes first.
    for pid in $(ip netns pids "$ns"); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns"
  done
  # An interrupted `up` may have left the pair in the root namespace.
  ip link del "$DEV0" 2>/dev/null || true
}

status() {
  have_ns "$NS0" && have_ns "$NS1" && have_dev "$NS0" "$DEV0" && have_dev "$NS1" "$DEV1" &&
    ip -n "$NS0" -o addr show dev "$DEV0" | grep -q "inet ${ADDR0} " &&
    ip -n "$NS1" -o addr show dev "$DEV1" | grep -q "inet ${ADDR1} "
}

case "${1:-}" in
  up | down | status) ;;
  -h | --help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac
command -v ip >/dev/null 2>&1 || die "'ip' is not installed: install iproute2 (apt-get install iproute2)"
[ "$(id -u)" = 0 ] || die "network namespaces need root (running as uid $(id -u))"
"$1"
