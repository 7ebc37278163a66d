#!/usr/bin/env bash
# Starts a real single-node SLURM cluster on localhost, with job accounting (slurmdbd + MariaDB,
# so sacct works as on real clusters). Everything lives in one state folder (default
# .slurm-local/ in the repository, or $CCCAD_SLURM_DIR); nothing is written to /etc.
# Needs root (the daemons run as root: SlurmUser=root). Prints the line that points clients at it:
#   export SLURM_CONF=<state>/slurm.conf
# Stop with slurm/local/down.sh (by the daemons' PID files).
#
# NODES=N (N > 1) makes N nodes on this one machine, each a slurmd in its own network namespace
# (address 10.x.y.(10+i) on a private bridge whose host side, 10.x.y.1, is where slurmctld is
# reached; x.y come from the controller's port, so test clusters do not collide). The nodes share
# the filesystem, munge and the controller; node i is `node<i>` (its own UTS namespace). down.sh
# removes every namespace, link and bridge this made (listed in <state>/net.list).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
state=${CCCAD_SLURM_DIR:-$here/../../.slurm-local}
mkdir -p "$state" && state=$(cd "$state" && pwd)
"$here/install.sh"

if [ -f "$state/slurmctld.pid" ] && kill -0 "$(cat "$state/slurmctld.pid")" 2>/dev/null; then
  echo "export SLURM_CONF=$state/slurm.conf"
  exit 0
fi
"$here/down.sh" >/dev/null 2>&1 || true

host=$(hostname -s)
cpus=$(getconf _NPROCESSORS_ONLN)  # (not nproc: it answers OMP_NUM_THREADS when that is set)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
nodes=${NODES:-1}
ctld_port=${CCCAD_SLURMCTLD_PORT:-16817}
mkdir -p "$state"/{munge,mysql,spool,ctld,log}
chmod 711 "$state/munge"  # munged refuses a socket folder others can write to

# munge: its own key and socket
[ -f "$state/munge/munge.key" ] || { dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none; }
chmod 400 "$state/munge/munge.key"
munged --force --key-file="$state/munge/munge.key" --socket="$state/munge/munge.sock" \
  --pid-file="$state/munge/munged.pid" --log-file="$state/log/munged.log" --seed-file="$state/munge/munged.seed"

# MariaDB on loopback, for slurmdbd only
db_port=${CCCAD_SLURM_DB_PORT:-16819}
if [ ! -d "$state/mysql/mysql" ]; then
  mariadb-install-db --datadir="$state/mysql" --user=root --auth-root-authentication-method=socket \
    --skip-test-db >"$state/log/mariadb-install.log" 2>&1
fi
mariadbd --datadir="$state/mysql" --user=root --socket="$state/mysql.sock" --port="$db_port" \
  --bind-address=127.0.0.1 --pid-file="$state/mariadb.pid" --log-error="$state/log/mariadb.log" \
  --innodb-buffer-pool-size=64M >/dev/null 2>&1 &
for _ in $(seq 600); do mariadb --socket="$state/mysql.sock" -e "select 1" >/dev/null 2>&1 && break; sleep 0.1; done
mariadb --socket="$state/mysql.sock" -e "select 1" >/dev/null 2>&1 \
  || { echo "slurm/local/up.sh: MariaDB did not start within 60 s; see $state/log/mariadb.log" >&2; exit 1; }
mariadb --socket="$state/mysql.sock" -e "
  CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'cccad-local';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

dbd_port=${CCCAD_SLURMDBD_PORT:-16820}
auth="AuthType=auth/munge
AuthInfo=socket=$state/munge/munge.sock,cred_expire=5"
cat >"$state/slurmdbd.conf" <<CONF
$auth
DbdHost=localhost
DbdPort=$dbd_port
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=cccad-local
StorageLoc=slurm_acct_db
PidFile=$state/slurmdbd.pid
LogFile=$state/log/slurmdbd.log
CONF
chmod 600 "$state/slurmdbd.conf"

# the settings that make a one-machine cluster quick and cgroup-free (see shared notes)
if [ "$nodes" -gt 1 ]; then  # one slurmd per network namespace (see the top)
  net=10.$(( 20 + ctld_port / 256 % 200 )).$(( ctld_port % 256 ))
  ctld_host="$host($net.1)"
  node_files="SlurmdSpoolDir=$state/spool/%n
SlurmdPidFile=$state/slurmd.%n.pid
SlurmdLogFile=$state/log/slurmd.%n.log
SlurmdTimeout=30"
  node_lines=$(for i in $(seq "$nodes"); do
    echo "NodeName=node$i NodeHostname=node$i NodeAddr=$net.$((10 + i)) CPUs=$cpus RealMemory=$(( mem / nodes )) State=UNKNOWN"
  done)
  partition_nodes="node[1-$nodes]"
else
  ctld_host=$host
  node_files="SlurmdSpoolDir=$state/spool
SlurmdPidFile=$state/slurmd.pid
SlurmdLogFile=$state/log/slurmd.log"
  node_lines="NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN"
  partition_nodes=$host
fi

cat >"$state/slurm.conf" <<CONF
ClusterName=cccad
SlurmctldHost=$ctld_host
SlurmUser=root
$auth
SlurmctldPort=$ctld_port
SlurmdPort=${CCCAD_SLURMD_PORT:-16818}
StateSaveLocation=$state/ctld
SlurmctldPidFile=$state/slurmctld.pid
SlurmctldLogFile=$state/log/slurmctld.log
$node_files
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$dbd_port
AccountingStoragePass=$state/munge/munge.sock
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
KillWait=5
DefMemPerCPU=512
JobRequeue=1
MinJobAge=3600
MaxArraySize=10001
ReturnToService=2
$node_lines
PartitionName=local Nodes=$partition_nodes Default=YES MaxTime=INFINITE State=UP
CONF
: >"$state/cgroup.conf"

export SLURM_CONF=$state/slurm.conf
slurmdbd  # reads slurmdbd.conf beside $SLURM_CONF
for _ in $(seq 100); do timeout 5 sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.1; done
timeout 10 sacctmgr -i add cluster cccad >/dev/null 2>&1 || true
if [ "$nodes" -gt 1 ]; then
  bridge=cb$ctld_port
  : >"$state/net.list"
  ip link add "$bridge" type bridge && echo "link $bridge" >>"$state/net.list"
  ip addr add "$net.1/24" dev "$bridge"
  ip link set "$bridge" up
  for i in $(seq "$nodes"); do
    ns=cccad$ctld_port-node$i veth=cv$ctld_port-$i
    ip netns add "$ns" && echo "netns $ns" >>"$state/net.list"
    ip link add "$veth" type veth peer name eth0 netns "$ns" && echo "link $veth" >>"$state/net.list"
    ip link set "$veth" master "$bridge" up
    ip -n "$ns" addr add "$net.$((10 + i))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    mkdir -p "$state/spool/node$i"
  done
fi
slurmctld
if [ "$nodes" -gt 1 ]; then
  # nsenter, not `ip netns exec`: that remounts /sys without the cgroup mount slurmd wants
  for i in $(seq "$nodes"); do
    nsenter --net="/run/netns/cccad$ctld_port-node$i" unshare --uts sh -c "hostname node$i; exec slurmd -N node$i"
  done
else
  slurmd
fi
up() { [ "$(timeout 5 sinfo -h -N -o %T 2>/dev/null | grep -cE '^(idle|mixed|allocated)')" -ge "$nodes" ]; }
for _ in $(seq 600); do up && break; sleep 0.1; done
up || { echo "slurm/local/up.sh: not all $nodes nodes came up; see $state/log" >&2; exit 1; }
echo "export SLURM_CONF=$state/slurm.conf"
