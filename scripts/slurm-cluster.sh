#!/usr/bin/env bash
# A one-node SLURM cluster on 127.0.0.1, for composeloop's tests and for trying srun/sbatch
# and Hydra's submitit launcher on one machine.
#
#   scripts/slurm-cluster.sh install   apt-get install slurm-wlm, slurmdbd, munge, mariadb-server
#   scripts/slurm-cluster.sh start     write the configs, start munged, the accounting database,
#                                      slurmdbd, slurmctld and slurmd, wait until the node is
#                                      idle (already running: fine)
#   scripts/slurm-cluster.sh stop      stop the daemons this script started (not running: fine)
#   scripts/slurm-cluster.sh status    one line; exit 0 when the node takes jobs
#
# Everything runs as root, as CI does. The controller and the node daemon run on this
# machine's hostname at 127.0.0.1 with all its CPUs; state, spool, database, pid and log
# files live under $COMPOSELOOP_SLURM_DIR (default /tmp/composeloop-slurm). slurm.conf and
# slurmdbd.conf are written to /etc/slurm, where srun, sbatch, sinfo and sacct look; a
# config that this script did not write is never overwritten. No systemd is needed: the
# daemons are started directly (CI containers and sandboxes have no init system).
#
# Accounting: submitit polls `sacct -o JobID,State,NodeList --parsable2 -j ID` for the
# state of every job it waits for. Without an accounting database, sacct prints "Slurm
# accounting storage is disabled" and exits 1, and submitit logs "Bypassing sacct error"
# on every poll (three lines each, through Hydra's logging) and never learns that a job
# died without writing its result (cancelled, out of memory, time limit): it waits
# forever. No slurm.conf setting makes a database-less sacct answer; `sacct -c` reads a
# job completion log (JobCompType=jobcomp/filetxt) but ignores array tasks, which is what
# Hydra's submitit launcher submits. So the cluster keeps real accounting, as production
# clusters do: slurmdbd over a MariaDB server that serves only it (on 127.0.0.1, data
# under $COMPOSELOOP_SLURM_DIR, about 100 MB of memory), and sacct answers for pending,
# running and finished jobs and array tasks alike.
set -euo pipefail

DIR=${COMPOSELOOP_SLURM_DIR:-/tmp/composeloop-slurm}
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
MARK="# written by composeloop scripts/slurm-cluster.sh"
HOST=$(hostname -s)
WAIT_S=${COMPOSELOOP_SLURM_WAIT_S:-60}
DB_PORT=${COMPOSELOOP_SLURM_DB_PORT:-6833}
DB=$DIR/mysql
# The database listens on 127.0.0.1 only and holds nothing but this cluster's job records.
DB_PASSWORD=composeloop

say() { echo "slurm-cluster: $*"; }
die() { echo "slurm-cluster: error: $*" >&2; exit 1; }

installed() {
    local program
    for program in slurmctld slurmd slurmdbd munged mariadbd srun sacct; do
        command -v "$program" >/dev/null || PATH=$PATH:/usr/sbin command -v "$program" >/dev/null || return 1
    done
}

install() {
    if installed; then
        say "already installed: slurm-wlm $(dpkg-query -W -f='${Version}' slurm-wlm 2>/dev/null || echo '?')"
        return
    fi
    command -v apt-get >/dev/null || die "no apt-get here: install SLURM (with slurmdbd), munge and MariaDB by hand"
    [ "$(id -u)" = 0 ] || die "install needs root (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends slurm-wlm slurmdbd munge mariadb-server >/dev/null
    say "installed slurm-wlm $(dpkg-query -W -f='${Version}' slurm-wlm), slurmdbd, munge and mariadb-server"
}

ours_or_absent() {
    [ ! -e "$1" ] || grep -qF "$MARK" "$1" || die "$1 exists and was not written by this script; not overwriting it"
}

write_conf() {
    ours_or_absent "$CONF"
    ours_or_absent "$DBD_CONF"
    mkdir -p "$DIR/state" "$DIR/spool" /etc/slurm
    cat >"$DBD_CONF.tmp" <<EOF
$MARK; database under $DB
AuthType=auth/munge
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
EOF
    chmod 0600 "$DBD_CONF.tmp"
    mv "$DBD_CONF.tmp" "$DBD_CONF"
    cat >"$CONF.tmp" <<EOF
$MARK; state under $DIR
ClusterName=composeloop
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/none
# Quick turnaround for tests: short waits, finished jobs leave squeue after 5 minutes.
MessageTimeout=10
KillWait=5
MinJobAge=300
InactiveLimit=0
SlurmdTimeout=30
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$(nproc --all) State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    mv "$CONF.tmp" "$CONF"
}

running() { # pid file -> 0 when that process is alive
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() { # description command...: retries the command until it succeeds or WAIT_S pass
    local what=$1 deadline=$((SECONDS + WAIT_S))
    shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "$what did not come up in ${WAIT_S}s; see the logs in $DIR"
        sleep 0.5
    done
}

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
        say "created /etc/munge/munge.key"
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- munged
    touch "$DIR/started-munged"
    wait_for munged sh -c 'munge -n </dev/null | unmunge'
}

sql() { mariadb --socket="$DB/mysqld.sock" -u root "$@"; }

start_database() {
    running "$DB/mariadbd.pid" && return
    if [ ! -d "$DB/mysql" ]; then
        mkdir -p "$DB"
        chown mysql:mysql "$DB"
        mariadb-install-db --user=mysql --datadir="$DB" --auth-root-authentication-method=socket \
            --skip-test-db >"$DIR/mariadb-install.log" 2>&1 || die "mariadb-install-db failed; see $DIR/mariadb-install.log"
    fi
    setsid mariadbd --user=mysql --datadir="$DB" --socket="$DB/mysqld.sock" --pid-file="$DB/mariadbd.pid" \
        --bind-address=127.0.0.1 --port="$DB_PORT" --log-error="$DB/mariadbd.log" \
        --innodb-buffer-pool-size=32M </dev/null >/dev/null 2>&1 &
    wait_for "the accounting database (MariaDB)" sql -e "select 1"
    sql -e "create user if not exists 'slurm'@'127.0.0.1' identified by '$DB_PASSWORD';
            create user if not exists 'slurm'@'localhost' identified by '$DB_PASSWORD';
            grant all on slurm_acct_db.* to 'slurm'@'127.0.0.1';
            grant all on slurm_acct_db.* to 'slurm'@'localhost';"
}

start_accounting() {
    running "$DIR/slurmdbd.pid" || slurmdbd
    wait_for slurmdbd sacctmgr -n show cluster
    sacctmgr -n -P show cluster format=cluster | grep -qx composeloop || sacctmgr -i add cluster composeloop >/dev/null
}

node_state() { # idle, mix, alloc, drain, down, ...; empty when no controller answers
    { sinfo -h -N -n "$HOST" -o %t 2>/dev/null || true; } | head -1 | tr -d '*~#!%$@^-'
}

node_up() {
    case "$(node_state)" in idle | mix | alloc | drain | drng | down) return 0 ;; esac
    return 1
}

all_running() {
    running "$DB/mariadbd.pid" && running "$DIR/slurmdbd.pid" && running "$DIR/slurmctld.pid" &&
        running "$DIR/slurmd.pid"
}

start() {
    installed || die "SLURM is not installed: run $0 install first"
    [ "$(id -u)" = 0 ] || die "start needs root (the daemons run as root)"
    if all_running; then
        say "already running: $(sinfo -h -o '%P %a %D %t %C' | head -1)"
        return
    fi
    write_conf
    start_munge
    start_database
    start_accounting
    running "$DIR/slurmctld.pid" || slurmctld
    running "$DIR/slurmd.pid" || slurmd
    wait_for "node $HOST" node_up
    # A node left drained or down by an earlier, unclean stop takes no jobs until resumed.
    case "$(node_state)" in
        drain | drng | down) scontrol update NodeName="$HOST" State=RESUME ;;
    esac
    say "running: $(sinfo -h -o '%P %a %D %t %C' | head -1) (partition avail nodes state CPUs A/I/O/T)"
}

stop_daemon() { # name pidfile
    if running "$2"; then
        local pid
        pid=$(cat "$2")
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        say "stopped $1"
    fi
    rm -f "$2"
}

stop() {
    stop_daemon slurmd "$DIR/slurmd.pid"
    stop_daemon slurmctld "$DIR/slurmctld.pid"
    stop_daemon slurmdbd "$DIR/slurmdbd.pid"
    stop_daemon mariadbd "$DB/mariadbd.pid"
    if [ -e "$DIR/started-munged" ]; then
        stop_daemon munged /run/munge/munged.pid
        rm -f "$DIR/started-munged"
    fi
}

status() {
    if ! installed; then
        say "not installed"
        return 1
    fi
    if ! all_running; then
        say "down (not every daemon runs; pid files under $DIR)"
        return 1
    fi
    local state
    state=$(node_state)
    case "$state" in
        idle | mix | alloc) say "up: node $HOST $state"; return 0 ;;
        "") say "down (no controller answers)"; return 1 ;;
        *) say "node $HOST $state"; return 1 ;;
    esac
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
