#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for `make test-slurm`: the data build's `--executor slurm` then runs
# through a real slurmctld, slurmd, sbatch and squeue, not a mock of them.
#
#   scripts/slurm_local_cluster.sh start DIR   # prints the SLURM_CONF line to export
#   scripts/slurm_local_cluster.sh stop DIR
#
# Everything lives in DIR (config, munge key and socket, state, logs); nothing under /etc is touched, and a
# cluster this machine already runs keeps running (its own ports, its own munge socket). Needs Slurm's daemons
# and munge (Debian/Ubuntu: `apt-get install slurm-wlm munge`) and root, since slurmd starts the jobs' processes.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
conf=$dir/slurm.conf

stop() {
  for pidfile in "$dir/run/slurmd.pid" "$dir/run/slurmctld.pid" "$dir/run/munged.pid"; do
    [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    # slurmctld saves its state before it exits: wait, so a next start finds the ports free.
    for _ in $(seq 20); do
      kill -0 "$pid" 2>/dev/null && [ "$(ps -o stat= -p "$pid" | cut -c1)" != Z ] || break
      sleep 0.5
    done
    rm -f "$pidfile"
  done
}

start() {
  for tool in slurmctld slurmd munged mungekey sbatch; do
    command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install slurm-wlm munge" >&2; exit 2; }
  done
  [ "$(id -u)" -eq 0 ] || { echo "slurmd must run as root to start jobs" >&2; exit 2; }
  stop  # a cluster left by an earlier run in DIR
  mkdir -p "$dir"/{state,spool,log,run}
  host=$(hostname -s)
  cpus=$(nproc)
  # Slurm refuses a node that claims more memory than it has: leave the OS its share.
  mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  cat >"$conf" <<EOF
ClusterName=midtrain-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${MIDTRAIN_SLURMCTLD_PORT:-6917}
SlurmdPort=${MIDTRAIN_SLURMD_PORT:-6918}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/run/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  [ -s "$dir/run/munge.key" ] || mungekey --create --keyfile="$dir/run/munge.key" --force
  chmod 600 "$dir/run/munge.key"
  munged --key-file="$dir/run/munge.key" --socket="$dir/run/munge.socket" --pid-file="$dir/run/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/run/munged.seed" --force
  # -c: a clean start, without the jobs an earlier run of this cluster left queued
  SLURM_CONF=$conf slurmctld -c -f "$conf"
  SLURM_CONF=$conf slurmd -f "$conf"
  for _ in $(seq 30); do  # the node registers within seconds
    if SLURM_CONF=$conf sinfo --noheader --states=idle 2>/dev/null | grep -q local; then
      echo "export SLURM_CONF=$conf"
      return
    fi
    sleep 1
  done
  echo "the Slurm node did not come up; logs in $dir/log" >&2
  stop
  exit 1
}

case $action in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
