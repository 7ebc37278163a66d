#!/usr/bin/env bash
# Fails, or brings back, one node of a several-node local cluster (up.sh with NODES > 1), to see
# what a study does when it loses a node:
#   node.sh cut N      node N's link goes down: the node and whatever runs on it are cut off, as
#                      a failed switch port or a hung machine looks to the others
#   node.sh reboot N   every process in node N's namespace is killed (the machine restarts), its
#                      link comes up and its slurmd starts again
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
state=${CCCAD_SLURM_DIR:-$here/../../.slurm-local}
[ $# -eq 2 ] || { echo "usage: node.sh cut|reboot N" >&2; exit 2; }
what=$1 i=$2
port=$(sed -n 's/^SlurmctldPort=//p' "$state/slurm.conf" 2>/dev/null || true)
ns=cccad$port-node$i veth=cv$port-$i
grep -qx "netns $ns" "$state/net.list" 2>/dev/null \
  || { echo "node.sh: no node $i in the cluster of $state (only clusters of several nodes have one)" >&2; exit 2; }
case $what in
  cut)
    ip link set "$veth" down ;;
  reboot)
    for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null || true; done
    ip link set "$veth" up
    export SLURM_CONF=$state/slurm.conf
    # as up.sh starts it: nsenter, its own hostname
    nsenter --net="/run/netns/$ns" unshare --uts sh -c "hostname node$i; exec slurmd -N node$i" ;;
  *)
    echo "node.sh: unknown action '$what' (cut or reboot)" >&2; exit 2 ;;
esac
