#!/usr/bin/env bash
# Installs what the local SLURM cluster needs (Debian's packages): slurmctld/slurmd, slurmdbd with
# MariaDB for real job accounting (sacct), munge. Needs root. Does nothing if all are there.
set -euo pipefail
need=()
for cmd in slurmctld slurmd slurmdbd sbatch sacct munged mariadbd mariadb-install-db; do
  command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
[ ${#need[@]} -eq 0 ] && exit 0
echo "slurm/local/install.sh: installing slurm-wlm slurmdbd munge mariadb-server (missing: ${need[*]})"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq slurm-wlm slurmdbd munge mariadb-server >/dev/null
