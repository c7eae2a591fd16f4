#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for the Slurm allocation tests (issue 12) and for a
# person trying Ballast's Slurm support out.
#
#   scripts/slurm-local.sh up      # install slurm-wlm + munge if missing, start munged, slurmctld,
#                                  # slurmd; wait until the node is idle; print `export SLURM_CONF=...`
#   eval "$(scripts/slurm-local.sh env)"   # the environment Slurm's commands need (stdout only)
#   scripts/slurm-local.sh check   # sbatch two jobs (1 and 2 tasks, each `srun`), check their output
#   scripts/slurm-local.sh down    # stop the daemons this script started (packages stay installed)
#
# Everything lives in one state dir, $BALLAST_SLURM_DIR (default /var/tmp/ballast-slurm): the
# config, a private munge key and socket, the controller's state, slurmd's spool, pid files, logs.
# /etc/slurm and the system's munge are never touched, so a machine's own Slurm is left alone
# (set BALLAST_SLURM_PORT, default 6817, the controller's port; slurmd uses the next one, if a
# system slurmctld already holds them). `rm -rf` the state dir after `down` to start afresh.
# BALLAST_SLURM_CPUS=N: the node offers N CPUs, not the hardware's count; BALLAST_SLURM_TIMEOUT:
# seconds for each wait (default 60).
#
# `up` and `down` need root (they re-run themselves under `sudo -n` when it is available); `check`
# and `env` do not. Exit status: 0 ok, 1 failure (the reason, and a failed daemon's last log lines),
# 2 usage, 77 skipped (cannot run here: not root and no sudo, no apt-get to install with).
#
# Tried as root on Debian 12 (bookworm) in a container whose PID 1 is not systemd (no cgroup
# delegation), 2 CPUs: slurm-wlm 22.05.8-4+deb12u3 (`sinfo --version`: slurm-wlm 22.05.8), munge
# 0.5.15-2+deb12u1. `up` took ~10 s with the install, under 1 s after; `check` 4-6 s; `down` < 1 s.
# Steps that needed care:
# - Every Slurm command needs SLURM_CONF: with no /etc/slurm/slurm.conf even `sinfo --version`
#   tries a DNS SRV lookup for a configless controller and dies ("Could not establish a
#   configuration source"). Callers (the master that runs sbatch) must inherit the exported value;
#   jobs pass it on to srun because sbatch exports the submitter's environment.
# - The packages' maintainer scripts start munge, slurmctld and slurmd through invoke-rc.d (they ship
#   init.d scripts): a temporary policy-rc.d stops that during the install (Docker images have one).
# - munged runs as root with its own key and socket in the state dir; slurm.conf's
#   AuthInfo=socket=... points both auth/munge and cred/munge at it. The key must be mode 0600.
# - No cgroups: ProctrackType=proctrack/linuxproc, TaskPlugin=task/none,
#   JobAcctGatherType=jobacct_gather/none; with those 22.05 asks for no cgroup.conf.
# - The daemons inherit open descriptors: started with the lock's fd open they held the lock, and
#   the next `up` waited for ever. They are now started with it closed.
# - A stopped daemon stays a zombie for ~2 s here (this PID 1 reaps late): "still running" means a
#   thread that is not a zombie, or `down` would wait for nothing and `up` see a dead daemon alive.
# - Harmless log noise: every daemon start logs mpi/pmix load errors (libpmix is only recommended;
#   MpiDefault=none), and munged logs "Unauthorized credential for client UID=0" at Info level on
#   daemon starts and step launches. MailProg=/bin/true silences "Configured MailProg is invalid".
# - No accounting daemon, so no sacct: `check` reads a job's end state from `scontrol show job`,
#   which remembers finished jobs for MinJobAge (60 s). slurmctld keeps its state (job ids go on)
#   across `down` and `up`.
# - SelectTypeParameters=CR_CPU with the CPU count from `slurmd -C`: two 1-CPU jobs run at once on
#   2 CPUs (the test's two workers). BALLAST_SLURM_CPUS=N offers N instead (config_overrides).
set -euo pipefail

STATE=${BALLAST_SLURM_DIR:-/var/tmp/ballast-slurm}
CTLD_PORT=${BALLAST_SLURM_PORT:-6817}
# CPUs the node offers; the hardware's count unless set (more lets a small CI machine run several
# one-CPU worker jobs at once).
CPUS=${BALLAST_SLURM_CPUS:-}
[[ -z $CPUS || $CPUS =~ ^[1-9][0-9]{0,3}$ ]] || {
    echo "slurm-local: BALLAST_SLURM_CPUS must be a number from 1 to 9999, not '$CPUS'" >&2
    exit 2
}
TIMEOUT_S=${BALLAST_SLURM_TIMEOUT:-60} # each wait (a daemon ready, the node idle, a job done)
CONF=$STATE/etc/slurm.conf
MUNGE_DIR=$STATE/munge
MUNGE_SOCKET=$MUNGE_DIR/munge.socket
RUN_DIR=$STATE/run
LOG_DIR=$STATE/log
SKIP=77

say() { echo "slurm-local: $*" >&2; }
fail() {
    say "FAIL: $*"
    exit 1
}
skip() {
    echo "skipped: $*" >&2
    exit $SKIP
}
usage() {
    sed -n '2,/^# Tried as root/{/^# Tried as root/d;s/^# \{0,1\}//p}' "$0" >&2
    exit 2
}

# Runs `CMD ARGS...` every 0.2 s until it succeeds (status 0) or TIMEOUT_S have passed (status 1).
eventually() {
    local deadline=$((SECONDS + TIMEOUT_S))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# True while one of process $1's threads is not a zombie. A stopped daemon stays a zombie until
# PID 1 reaps it, which takes seconds in this container and never happens under some inits; a
# thread count keeps a daemon whose main thread alone has exited counted as running.
running() {
    local stat
    for stat in /proc/"$1"/task/*/stat; do
        stat=$(cat "$stat" 2>/dev/null) || continue
        stat=${stat##*) }
        [[ ${stat%% *} == Z ]] || return 0
    done
    return 1
}
stopped() { ! running "$1"; }

# The pid in pid file $1 if that process is running and is the program $2 (a pid file can outlive
# its daemon and the number be reused: never signal a stranger).
live_pid() {
    local file=$1 comm=$2 pid
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] && running "$pid" || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] || return 1
    echo "$pid"
}

log_hint() {
    local f
    for f in "$LOG_DIR"/*.log "$MUNGE_DIR"/munged.log; do
        [[ -s $f ]] || continue
        say "--- last lines of $f"
        tail -n 15 "$f" >&2
    done
}

need_root() {
    [[ $(id -u) == 0 ]] && return 0
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        exec sudo -n env BALLAST_SLURM_DIR="$STATE" BALLAST_SLURM_PORT="$CTLD_PORT" \
            BALLAST_SLURM_CPUS="$CPUS" BALLAST_SLURM_TIMEOUT="$TIMEOUT_S" "$(readlink -f "$0")" "$@"
    fi
    skip "'$1' needs root (or passwordless sudo): it installs packages and runs Slurm's daemons as root"
}

take_lock() {
    flock -w "$TIMEOUT_S" 9 ||
        fail "$STATE/lock still held after ${TIMEOUT_S}s (another 'up' or 'down' running?)"
}

print_env() {
    echo "export SLURM_CONF=$CONF"
}

# ---- up ----------------------------------------------------------------------------------------
install_packages() {
    local missing=() prog
    for prog in munged munge slurmctld slurmd sbatch srun sinfo; do
        command -v "$prog" >/dev/null 2>&1 || missing+=("$prog")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null 2>&1 ||
        skip "${missing[*]} missing and no apt-get to install slurm-wlm and munge with"
    say "installing slurm-wlm and munge (missing: ${missing[*]})"
    # The packages' maintainer scripts would start the system's munge and Slurm services (which we
    # do not use, and which `down` could not stop): a policy-rc.d that forbids it, for the install
    # only, unless the machine already has one.
    local policy=/usr/sbin/policy-rc.d ours=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        ours=1
    fi
    local rc=0
    {
        apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                slurm-wlm munge
    } >"$STATE/apt.log" 2>&1 || rc=$?
    ((ours)) && rm -f "$policy"
    ((rc == 0)) || {
        tail -n 20 "$STATE/apt.log" >&2
        fail "apt-get install slurm-wlm munge failed (status $rc, log $STATE/apt.log)"
    }
}

munge_ok() { munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }

start_munged() {
    if live_pid "$MUNGE_DIR/munged.pid" munged >/dev/null && munge_ok; then
        return 0
    fi
    local key=$MUNGE_DIR/munge.key
    if [[ ! -s $key ]]; then
        # munged refuses a key readable by others; the key never leaves the state dir.
        (umask 077 && dd if=/dev/urandom of="$key" bs=1024 count=1 status=none)
    fi
    rm -f "$MUNGE_SOCKET" "$MUNGE_DIR/munged.pid"
    munged --socket="$MUNGE_SOCKET" --key-file="$key" --pid-file="$MUNGE_DIR/munged.pid" \
        --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed" 9>&- ||
        { log_hint; fail "munged did not start"; }
    eventually munge_ok || { log_hint; fail "munged does not answer on $MUNGE_SOCKET"; }
}

# The node's line from `slurmd -C` (CPUs, sockets, cores, threads, RealMemory), minus NodeName;
# with BALLAST_SLURM_CPUS, that many CPUs instead (and the real memory).
node_hardware() {
    local line
    line=$(slurmd -C 2>/dev/null | grep -m1 '^NodeName=') || fail "slurmd -C printed no NodeName line"
    line=${line#NodeName=* }
    if [[ -n $CPUS ]]; then
        [[ $line =~ (RealMemory=[0-9]+) ]] || fail "no RealMemory in slurmd -C's '$line'"
        line="CPUs=$CPUS ${BASH_REMATCH[1]}"
    fi
    echo "$line"
}

write_conf() { # $1 = the file to write
    local node hw
    node=$(hostname -s)
    hw=$(node_hardware)
    cat >"$1" <<EOF
# Written by scripts/slurm-local.sh (Ballast) on every 'up': a one-node test cluster.
ClusterName=ballast
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$((CTLD_PORT + 1))
# Both daemons as root: no slurm user, and jobs may run as any local user.
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# The private munged started by this script, not the system's.
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups (a container without systemd cannot delegate them): processes tracked by parent pid.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
# srun would copy the submitter's rlimits onto tasks; a container may refuse some of them.
PropagateResourceLimits=NONE
SchedulerType=sched/backfill
SelectType=select/cons_tres
# CPUs, not cores or memory, are what a job takes: a 1-CPU worker job leaves the rest free.
SelectTypeParameters=CR_CPU
# A node that was down comes back as soon as its slurmd registers with a valid config.
ReturnToService=2
# A test bed: few jobs, finished jobs forgotten after a minute, a stuck job killed quickly.
MaxJobCount=1000
MinJobAge=60
KillWait=5
InactiveLimit=0
# No mail on this machine: without it slurmctld logs an error at every start.
MailProg=/bin/true
$([[ -n $CPUS ]] && printf '%s\n' "# BALLAST_SLURM_CPUS: slurmd takes the CPU count below, not the hardware's." \
    SlurmdParameters=config_overrides)
NodeName=$node NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
}

ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
NODE_STATE=
# True once the node takes jobs: idle, or busy (an `up` while jobs run must not wait for them).
# A '*' (not responding), drain or down state is not ready.
node_ready() {
    NODE_STATE=$(sinfo -h -o %T 2>/dev/null) || return 1
    case $NODE_STATE in
        idle | mixed | allocated | completing) return 0 ;;
    esac
    return 1
}

start_daemon() { # $1 = slurmctld | slurmd
    local name=$1 pidfile=$RUN_DIR/$1.pid
    live_pid "$pidfile" "$name" >/dev/null && return 0
    rm -f "$pidfile"
    case $name in
        slurmctld) slurmctld -f "$CONF" 9>&- ;;
        slurmd) slurmd -f "$CONF" -N "$(hostname -s)" 9>&- ;;
    esac || { log_hint; fail "$name did not start (logs in $LOG_DIR)"; }
}

stop_pidfile() { # $1 = pid file, $2 = program name
    local pid
    pid=$(live_pid "$1" "$2") || {
        rm -f "$1"
        return 0
    }
    say "stopping $2 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! eventually stopped "$pid"; then
        say "$2 (pid $pid) ignored TERM for ${TIMEOUT_S}s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

any_running() {
    live_pid "$RUN_DIR/slurmd.pid" slurmd >/dev/null ||
        live_pid "$RUN_DIR/slurmctld.pid" slurmctld >/dev/null
}

stop_slurm() {
    stop_pidfile "$RUN_DIR/slurmd.pid" slurmd
    stop_pidfile "$RUN_DIR/slurmctld.pid" slurmctld
}

cmd_up() {
    chmod 755 "$STATE"
    install_packages
    mkdir -p "$STATE/etc" "$STATE/ctld" "$STATE/spool" "$RUN_DIR" "$LOG_DIR" "$MUNGE_DIR"
    chmod 700 "$STATE/ctld"
    # munged's clients (every Slurm command, any user's) need to reach the socket, nothing else.
    chmod 711 "$MUNGE_DIR"
    start_munged

    local fresh=$STATE/etc/slurm.conf.new
    write_conf "$fresh"
    if [[ -e $CONF ]] && cmp -s "$fresh" "$CONF"; then
        rm -f "$fresh"
    else
        if any_running; then
            say "the config changed (hardware, port or path): restarting slurmctld and slurmd"
            stop_slurm
        fi
        mv "$fresh" "$CONF"
    fi

    start_daemon slurmctld
    eventually ctld_up || { log_hint; fail "slurmctld does not answer 'scontrol ping'"; }
    start_daemon slurmd
    if ! eventually node_ready; then
        sinfo -N -l >&2 || true
        sinfo -R >&2 || true
        log_hint
        fail "node $(hostname -s) is not idle after ${TIMEOUT_S}s (state: ${NODE_STATE:-unknown});" \
            "once the reason above is fixed: scontrol update nodename=$(hostname -s) state=resume," \
            "or '$0 down' and remove $STATE"
    fi
    say "up: $(sinfo --version), node $(hostname -s) $NODE_STATE ($(sinfo -h -o %c) CPUs), partition debug; state in $STATE"
    print_env
}

# ---- down --------------------------------------------------------------------------------------
cmd_down() {
    [[ -d $STATE ]] || {
        say "nothing to stop ($STATE does not exist)"
        return 0
    }
    if live_pid "$RUN_DIR/slurmctld.pid" slurmctld >/dev/null; then
        # Jobs left running would leave slurmstepd and their tasks behind once slurmd is gone.
        local jobs
        jobs=$(squeue -h -o %i 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            say "cancelling jobs: ${jobs//$'\n'/ }"
            # shellcheck disable=SC2086 # one job id a word
            scancel $jobs || true
            eventually queue_empty ||
                say "jobs still listed after ${TIMEOUT_S}s: $(squeue -h 2>&1)"
        fi
    fi
    stop_slurm
    stop_pidfile "$MUNGE_DIR/munged.pid" munged
    say "down (packages and $STATE kept)"
}

# ---- check -------------------------------------------------------------------------------------
JOB_STATE=
# Sets JOB_STATE to job $1's state once it has left the queue's active states; false until then.
job_finished() {
    JOB_STATE=$(scontrol -o show job "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)
    case $JOB_STATE in
        PENDING | RUNNING | CONFIGURING | COMPLETING | SUSPENDED | REQUEUED | RESIZING | "") return 1 ;;
    esac
}
queue_empty() { [[ -z $(squeue -h 2>/dev/null) ]]; }

# Submits `sbatch ARGS...` writing to file $1, waits for it, and checks it COMPLETED; prints its id.
run_job() {
    local out=$1 id
    shift
    id=$(sbatch --parsable --chdir="$WORK" --output="$out" "$@") || fail "sbatch $* failed (files in $WORK)"
    id=${id%%;*}
    eventually job_finished "$id" ||
        fail "job $id not finished after ${TIMEOUT_S}s (files in $WORK): $(scontrol -o show job "$id" 2>&1 | head -c 400)"
    [[ $JOB_STATE == COMPLETED ]] ||
        fail "job $id ended $JOB_STATE (files in $WORK): $(scontrol -o show job "$id" | grep -o 'Reason=[^ ]*\|ExitCode=[^ ]*' | tr '\n' ' ') output: $(cat "$out" 2>&1)"
    echo "$id"
}

cmd_check() {
    [[ -s $CONF ]] || fail "no cluster config at $CONF: run '$0 up' first"
    command -v sbatch >/dev/null 2>&1 || fail "sbatch is not installed: run '$0 up' first"
    ctld_up || fail "slurmctld does not answer (SLURM_CONF=$CONF): run '$0 up'"
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/ballast-slurm-check.XXXXXX")
    chmod 755 "$WORK"
    local host id1 id2 expected
    host=$(hostname)

    id1=$(run_job "$WORK/one.out" --job-name=ballast-check-1 --ntasks=1 --wrap 'srun hostname')
    [[ $(<"$WORK/one.out") == "$host" ]] ||
        fail "job $id1 (srun hostname) printed '$(<"$WORK/one.out")', expected '$host' (files in $WORK)"
    say "job $id1 (1 task, srun hostname) COMPLETED, printed: $(<"$WORK/one.out")"

    # Two tasks: each prints its rank, so both must have been started by srun. The batch script,
    # not this shell, keeps the \$ for each task's sh to expand. A one-CPU node runs both on it.
    local overcommit=()
    (($(sinfo -h -o %c) < 2)) && overcommit=(--overcommit)
    # shellcheck disable=SC2016
    id2=$(run_job "$WORK/two.out" --job-name=ballast-check-2 --ntasks=2 "${overcommit[@]}" \
        --wrap 'srun sh -c "echo task \$SLURM_PROCID of \$SLURM_NTASKS on \$(hostname)"')
    expected=$(printf 'task 0 of 2 on %s\ntask 1 of 2 on %s' "$host" "$host")
    [[ $(sort "$WORK/two.out") == "$expected" ]] ||
        fail "job $id2 printed '$(cat "$WORK/two.out")', expected both tasks on $host (files in $WORK)"
    say "job $id2 (2 tasks) COMPLETED, printed: $(sort "$WORK/two.out" | paste -sd ';')"

    eventually queue_empty ||
        fail "squeue still lists jobs after ${TIMEOUT_S}s: $(squeue -h 2>&1)"
    say "check passed: squeue -h is empty"
    rm -rf "$WORK"
}

# ---- main --------------------------------------------------------------------------------------
(($# == 1)) || usage
export SLURM_CONF=$CONF
case $1 in
    up)
        need_root up
        mkdir -p "$STATE"
        # Two `up`/`down` at once would race for the pid files. IMPORTANT: the daemons are started
        # with fd 9 closed, or they would hold this lock for ever.
        exec 9>>"$STATE/lock"
        take_lock
        cmd_up
        ;;
    down)
        need_root down
        if [[ -d $STATE ]]; then
            exec 9>>"$STATE/lock"
            take_lock
        fi
        cmd_down
        ;;
    check) cmd_check ;;
    env) print_env ;;
    -h | --help | help) usage ;;
    *) usage ;;
esac
