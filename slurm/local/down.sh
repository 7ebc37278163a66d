#!/usr/bin/env bash
# Stops the local SLURM cluster started by up.sh: each daemon by its PID file, then waits for it;
# then removes the network namespaces, links and bridge of a several-node cluster (net.list).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
state=${CCCAD_SLURM_DIR:-$here/../../.slurm-local}
[ -d "$state" ] || exit 0
for f in "$state"/slurmd*.pid "$state"/slurmctld.pid "$state"/slurmdbd.pid "$state"/mariadb.pid "$state"/munge/munged.pid; do
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$f"
done
if [ -f "$state/net.list" ]; then  # newest first: veths (their peers go with them), namespaces, the bridge
  tac "$state/net.list" | while read -r kind name; do
    case $kind in
      netns) ip netns del "$name" 2>/dev/null ;;
      link) ip link del "$name" 2>/dev/null ;;
    esac
  done
  rm -f "$state/net.list"
fi
exit 0
