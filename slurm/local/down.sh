#!/usr/bin/env bash
# Stops the local SLURM cluster started by up.sh: each daemon by its PID file, then waits for it.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
state=${CCCAD_SLURM_DIR:-$here/../../.slurm-local}
[ -d "$state" ] || exit 0
for pidfile in slurmd.pid slurmctld.pid slurmdbd.pid mariadb.pid munge/munged.pid; do
  f="$state/$pidfile"
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$f"
done
exit 0
