#!/usr/bin/env bash
# Two "nodes" on one machine for multi-node tests: network namespaces
# tandem_n0 and tandem_n1 joined by a veth pair,
#
#   tandem_n0: veth_n0 10.77.0.1/24  <->  tandem_n1: veth_n1 10.77.0.2/24
#
# with lo up in both. Usage: tools/netns.sh up|down|status|sweep
#   up      create what is missing (idempotent; a half-made setup is completed)
#   down    kill what still runs inside them and remove both namespaces
#           (idempotent; the veth pair goes with them)
#   status  exit 0 when the setup is complete, 1 otherwise
#   sweep   `down` for every tagged pair whose tag is the pid of a process
#           that no longer runs (a test killed before its own `down`)
# TANDEM_NETNS_TAG=T (digits: a test process's pid) names the namespaces
# tandem_n0_T and tandem_n1_T instead, so that concurrent users each have
# their own pair; the devices and addresses, which live inside the
# namespaces, stay the same. Needs root and iproute2 (`ip`). Cut the link with
#   ip -n tandem_n1 link set veth_n1 down
# and mend it with `... up`. tests/e2e/netns.cpp uses this script.
set -euo pipefail

readonly TAG=${TANDEM_NETNS_TAG:-}
readonly NS0=tandem_n0${TAG:+_$TAG} NS1=tandem_n1${TAG:+_$TAG}
readonly DEV0=veth_n0 DEV1=veth_n1
readonly ADDR0=10.77.0.1/24 ADDR1=10.77.0.2/24

die() {
  echo "netns.sh: $*" >&2
  exit 2
}

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }

have_ns() { ip netns list | awk '{print $1}' | grep -qx "$1"; }
have_dev() { ip -n "$1" link show "$2" >/dev/null 2>&1; }

up() {
  for ns in "$NS0" "$NS1"; do
    have_ns "$ns" || ip netns add "$ns"
    ip -n "$ns" link set lo up
  done
  # Either end missing (a half-made pair): start the pair again, made
  # inside the namespaces, so that the machine's own namespace (shared by
  # every user) never holds a device of ours.
  if ! have_dev "$NS0" "$DEV0" || ! have_dev "$NS1" "$DEV1"; then
    ip -n "$NS0" link del "$DEV0" 2>/dev/null || true
    ip -n "$NS1" link del "$DEV1" 2>/dev/null || true
    ip link add "$DEV0" netns "$NS0" type veth peer name "$DEV1" netns "$NS1"
  fi
  ip -n "$NS0" addr replace "$ADDR0" dev "$DEV0"
  ip -n "$NS1" addr replace "$ADDR1" dev "$DEV1"
  ip -n "$NS0" link set "$DEV0" up
  ip -n "$NS1" link set "$DEV1" up
}

# Removes namespace $1 and whatever runs inside it.
remove_ns() {
  have_ns "$1" || return 0
  # A namespace outlives `ip netns del` while a process is inside it:
  # whatever a test left running there goes first, again while a dying
  # launcher's child (forked just now) is still there, for up to ~2 s.
  local pids
  for _ in $(seq 20); do
    pids=$(ip netns pids "$1")
    [ -n "$pids" ] || break
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
    sleep 0.1
  done
  ip netns del "$1"
}

down() {
  remove_ns "$NS0"
  remove_ns "$NS1"
}

status() {
  have_ns "$NS0" && have_ns "$NS1" && have_dev "$NS0" "$DEV0" && have_dev "$NS1" "$DEV1" &&
    ip -n "$NS0" -o addr show dev "$DEV0" | grep -q "inet ${ADDR0} " &&
    ip -n "$NS1" -o addr show dev "$DEV1" | grep -q "inet ${ADDR1} "
}

sweep() {
  local ns tag
  for ns in $(ip netns list | awk '{print $1}' | grep -E '^tandem_n[01]_[0-9]+$' || true); do
    tag=${ns##*_}
    kill -0 "$tag" 2>/dev/null && continue
    remove_ns "$ns"
  done
}

case "${1:-}" in
  up | down | status | sweep) ;;
  -h | --help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac
[[ "$TAG" =~ ^[0-9]*$ ]] || die "TANDEM_NETNS_TAG=$TAG: expected digits (a pid)"
command -v ip >/dev/null 2>&1 || die "'ip' is not installed: install iproute2 (apt-get install iproute2)"
[ "$(id -u)" = 0 ] || die "network namespaces need root (running as uid $(id -u))"
"$1"
