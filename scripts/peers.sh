#!/usr/bin/env bash
# Ballast against the systems a user would pick instead, measured in one run on this machine
# (issue 13): the W3 makespan of docs/EXPERIMENTS.md and the W1 spawn throughput of
# docs/PERFORMANCE.md. Installs what it can, measures everything interleaved, prints one table.
#
# Usage: scripts/peers.sh [--no-install] [--no-build] [--only LIST] [--repeat N] [--w1-tasks N]
#   --no-install   use only what is already installed (Debian's parallel, the venv); skip the rest
#   --no-build     use the binaries already in target/release
#   --only LIST    systems and/or workloads, comma-separated: ballast, xargs, parallel, dask, ray,
#                  hyperqueue, W3, W1 (`--only parallel,W3`). W1 always runs xargs, its reference.
#   --repeat N     runs of every (system, workload); the median is reported (default 3). The runs
#                  are interleaved: run 1 of every system, then run 2, ... (order rotated each time)
#   --w1-tasks N   W1's batch (default 2000: GNU parallel and Dask run 100-250 `true`/s here, and
#                  bench.sh's 5,000 would take the run past 10 minutes)
#   PEERS_OUT=DIR  where peers.json and the logs go (default: bench/ in the repo, gitignored)
#   PEERS_DIR=DIR  the Python venv for Dask, Ray and HyperQueue (default ~/.cache/ballast-peers)
#
# Workloads:
#   W3  200 tasks, task i sleeps 1 s if i % 10 == 9, else (0.02, 0.05, 0.2)[i % 3] s, on 4 slots
#       (2 workers x 2 slots; `parallel -j4`; Ray one node with 4 CPUs); submission order; makespan
#       over the lower bound 36.2 s / 4 = 9.05 s. Process-running systems (Ballast's second row,
#       parallel, HyperQueue) all run the same `sh -c 'sleep D && : >STAMP'`, and the makespan ends
#       at the last stamp's mtime (HyperQueue's wait client polls once a second; file times move
#       in kernel ticks, 4 ms here, so that end can be up to a tick early). Ballast's sleep
#       rows and Dask and Ray run in-process sleeps (Ballast's worker timer, a Python function).
#   W1  N `true` on 2 slots (2 workers x 1 slot; `xargs -P2`, `parallel -j2`; Dask and Ray run it
#       with subprocess.run), tasks/s and the ratio to `seq N | xargs -P2 -n1 true` of the same run.
# Every cluster starts fresh and is warmed up before its clock starts (Ballast: workers alive;
# journal on, the default).
# A peer that cannot be installed or run is reported as skipped with the reason; the script fails
# only when Ballast itself cannot run. Every process is stopped by PID (Python peers by the process
# group the script gave them). Not part of .ci/run: it installs packages (about a minute) and its
# runs take about 7 minutes here.
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME and printf use the locale's decimal point

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${PEERS_OUT:-$ROOT/bench}
CACHE=${PEERS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ballast-peers}
VENV=$CACHE/venv
INSTALL=1
BUILD=1
ONLY=""
REPEAT=3
W1_TASKS=2000
while [ $# -gt 0 ]; do
    case "$1" in
        --no-install) INSTALL=0 ;;
        --no-build) BUILD=0 ;;
        --only) ONLY=",${2:?--only needs a list},"; shift ;;
        --repeat) REPEAT=${2:?--repeat needs a number}; shift ;;
        --w1-tasks) W1_TASKS=${2:?--w1-tasks needs a number}; shift ;;
        -h|--help) sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "peers.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[[ $REPEAT =~ ^[1-9][0-9]?$ ]] || { echo "peers.sh: --repeat takes 1..99" >&2; exit 2; }
[[ $W1_TASKS =~ ^[1-9][0-9]{0,5}$ ]] || { echo "peers.sh: --w1-tasks takes 1..999999" >&2; exit 2; }
[[ ${BASH_VERSINFO[0]} -ge 5 ]] || { echo "peers.sh: needs bash 5 (EPOCHREALTIME)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "peers.sh: needs python3" >&2; exit 2; }

ALL_SYSTEMS=(ballast xargs parallel dask ray hyperqueue)
only_names() { # the --only entries of one kind (systems or workloads)
    local kind=$1 n
    for n in ${ONLY//,/ }; do
        case "$n" in W3|W1) [ "$kind" = workload ] && echo "$n" ;; *) [ "$kind" = system ] && echo "$n" ;; esac
    done
}
for n in $(only_names system); do
    [[ " ${ALL_SYSTEMS[*]} " == *" $n "* ]] || { echo "peers.sh: unknown system $n" >&2; exit 2; }
done
want_system() { [ -z "$(only_names system)" ] || [[ "$ONLY" == *",$1,"* ]]; }
want_workload() { [ -z "$(only_names workload)" ] || [[ "$ONLY" == *",$1,"* ]]; }

# ---- processes ----------------------------------------------------------------------------------
PIDS=()   # our own children
PGROUPS=() # process groups led by a Python driver (Ray and Dask start helpers of their own)
stop_pids() {
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}
stop_group() { # TERM the group, 5 s grace, then KILL
    local pgid=$1 end=$((SECONDS + 5))
    kill -TERM -- "-$pgid" 2>/dev/null || true
    while kill -0 -- "-$pgid" 2>/dev/null && ((SECONDS < end)); do sleep 0.05; done
    kill -KILL -- "-$pgid" 2>/dev/null || true
    wait "$pgid" 2>/dev/null || true
}
SCRATCH=
cleanup() {
    local status=$? g
    trap - EXIT INT TERM
    stop_pids "${PIDS[@]}"
    for g in "${PGROUPS[@]}"; do stop_group "$g"; done
    [ -n "$SCRATCH" ] && rm -rf "$SCRATCH"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- install -------------------------------------------------------------------------------------
declare -A SKIP VERSION
mkdir -p "$OUT"
LOGS=$OUT/peers-logs
rm -rf "$LOGS"
mkdir -p "$LOGS"

install_parallel() {
    if ! command -v parallel >/dev/null; then
        ((INSTALL)) || { SKIP[parallel]="not installed (--no-install)"; return; }
        command -v apt-get >/dev/null || { SKIP[parallel]="no apt-get to install Debian's parallel"; return; }
        echo "installing GNU parallel (apt-get install parallel)"
        # A fresh machine has no package lists yet: update once, only if the first try fails.
        if ! apt-get install -y -qq parallel >"$LOGS/apt.log" 2>&1; then
            apt-get update -qq >>"$LOGS/apt.log" 2>&1 || true
            apt-get install -y -qq parallel >>"$LOGS/apt.log" 2>&1 ||
                { SKIP[parallel]="apt-get install parallel failed: $(tail -1 "$LOGS/apt.log")"; return; }
        fi
    fi
    # Debian's parallel asks for a citation once per user; --will-cite says we saw it.
    VERSION[parallel]=$(parallel --will-cite --version 2>/dev/null | head -1) ||
        { SKIP[parallel]="parallel --version failed"; return; }
}

# py_peer SYSTEM PIP_PACKAGE MODULE: importable from the venv, installing it if allowed.
py_peer() {
    local system=$1 package=$2 module=$3
    if [ ! -x "$VENV/bin/python" ]; then
        ((INSTALL)) || { SKIP[$system]="no venv at $VENV (--no-install)"; return; }
        mkdir -p "$CACHE"
        python3 -m venv "$VENV" >"$LOGS/venv.log" 2>&1 ||
            { SKIP[$system]="python3 -m venv failed: $(tail -1 "$LOGS/venv.log")"; return; }
    fi
    if ! "$VENV/bin/python" -c "import $module" 2>/dev/null; then
        ((INSTALL)) || { SKIP[$system]="$package not in $VENV (--no-install)"; return; }
        echo "installing $package into $VENV (pip)"
        timeout 900 "$VENV/bin/python" -m pip install -q "$package" >"$LOGS/pip-$package.log" 2>&1 ||
            { SKIP[$system]="pip install $package failed: $(tail -1 "$LOGS/pip-$package.log")"; return; }
    fi
    VERSION[$system]="$package $("$VENV/bin/python" -m pip show "$package" 2>/dev/null |
        sed -n 's/^Version: //p') (Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())'))"
}

want_system parallel && install_parallel
want_system dask && py_peer dask distributed distributed
want_system ray && py_peer ray ray ray
# PyPI's hyperqueue is the Python API; it ships no `hq` binary, but its LocalCluster runs the
# server and workers inside the Python process.
want_system hyperqueue && py_peer hyperqueue hyperqueue hyperqueue
VERSION[xargs]=$(xargs --version 2>/dev/null | head -1 || echo "xargs (unknown version)")

# ---- Ballast ---------------------------------------------------------------------------------------
if ((BUILD)); then
    echo "building (cargo build --release --workspace)"
    (cd "$ROOT" && cargo build --release --workspace --quiet)
fi
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
for b in master ballast-master worker; do
    [ -x "$BIN/$b" ] || { echo "peers.sh: missing $BIN/$b (build first)" >&2; exit 2; }
done
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/ballast-peers.XXXXXX")
# Private copies: a build in the shared target dir during the run cannot swap binaries under us.
mkdir -p "$SCRATCH/bin"
cp "$BIN/master" "$BIN/ballast-master" "$BIN/worker" "$SCRATCH/bin/"
MASTER=$SCRATCH/bin/master
WORKER=$SCRATCH/bin/worker
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
VERSION[ballast]="$("$MASTER" --version) at $COMMIT"
DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -c . || true)

# start_cluster DIR WORKERS SLOTS ARGS...: a fresh master (journal on, the default) and its workers;
# sets ADDR and CLUSTER (their PIDs).
start_cluster() {
    local dir=$1 workers=$2 slots=$3 i
    shift 3
    mkdir -p "$dir"
    "$MASTER" serve --listen 127.0.0.1:0 --port-file "$dir/port" --http off --data-dir "$dir/data" "$@" \
        >"$dir/master.log" 2>&1 &
    CLUSTER=("$!")
    PIDS+=("$!")
    for i in $(seq 500); do
        [ -s "$dir/port" ] && break
        sleep 0.02
    done
    [ -s "$dir/port" ] || { echo "peers.sh: master did not start; see $dir/master.log" >&2; exit 1; }
    ADDR=$(cat "$dir/port")
    for i in $(seq "$workers"); do
        "$WORKER" --master "$ADDR" --slots "$slots" --name "w$i" >"$dir/worker$i.log" 2>&1 &
        CLUSTER+=("$!")
        PIDS+=("$!")
    done
    local alive=0
    for i in $(seq 500); do
        alive=$("$MASTER" status --master "$ADDR" --json 2>/dev/null | grep -o '"state":"alive"' | wc -l || true)
        [ "$alive" -ge "$workers" ] && return 0
        sleep 0.02
    done
    echo "peers.sh: only $alive of $workers workers joined; see $dir" >&2
    exit 1
}
stop_cluster() {
    stop_pids "${CLUSTER[@]}"
    local keep=() p c
    for p in "${PIDS[@]}"; do
        for c in "${CLUSTER[@]}"; do [ "$p" = "$c" ] && continue 2; done
        keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

# ---- workloads ---------------------------------------------------------------------------------------
# W3's task i: 1 s if i % 10 == 9, else (0.02, 0.05, 0.2)[i % 3] s; in ms and as `sleep` takes it.
W3_MS=() W3_S=()
for ((i = 0; i < 200; i++)); do
    if ((i % 10 == 9)); then
        W3_MS+=(1000) W3_S+=(1)
    else
        short_ms=(20 50 200) short_s=(0.02 0.05 0.2)
        W3_MS+=("${short_ms[i % 3]}") W3_S+=("${short_s[i % 3]}")
    fi
done
W3_SLEEP=$SCRATCH/w3-sleep.jsonl
for i in "${!W3_MS[@]}"; do
    printf '{"sleep": "%sms", "size": %s}\n' "${W3_MS[i]}" "${W3_S[i]}"
done >"$W3_SLEEP"
# The same tasks as the process-running systems take them, each touching its stamp file last.
w3_ballast_commands() { # FILE STAMP_DIR
    local i
    for i in "${!W3_S[@]}"; do
        # shellcheck disable=SC2016 # $0 and $1 are for the task's sh, not for us
        printf '{"cmd": ["sh", "-c", "sleep \\"$0\\" && : >\\"$1\\"", "%s", "%s/%d"], "size": %s}\n' \
            "${W3_S[i]}" "$2" "$i" "${W3_S[i]}"
    done >"$1"
}
w3_shell_lines() { # FILE STAMP_DIR (GNU parallel runs each line with $PARALLEL_SHELL)
    local i
    for i in "${!W3_S[@]}"; do printf 'sleep %s && : >%s/%d\n' "${W3_S[i]}" "$2" "$i"; done >"$1"
}
# last_stamp DIR COUNT: the newest mtime (s since the epoch) if COUNT files exist, else nothing.
last_stamp() {
    local n
    n=$(find "$1" -type f | wc -l)
    [ "$n" -eq "$2" ] || return 0
    find "$1" -type f -printf '%T@\n' | sort -g | tail -1
}
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", a - b }'; }

RUNS=$OUT/peers-runs.jsonl
: >"$RUNS"
# record WORKLOAD SYSTEM LABEL REP SECONDS CLIENT_SECONDS LOAD NOTE (SECONDS empty: the run failed)
record() {
    local secs=${5:-null} client=${6:-null} note=${8//\\/\/}
    note=${note//\"/\'}
    printf '{"workload":"%s","system":"%s","label":"%s","rep":%d,"seconds":%s,"client_seconds":%s,"load_1m":%s,"note":"%s"}\n' \
        "$1" "$2" "$3" "$4" "$secs" "$client" "$7" "$note" >>"$RUNS"
    local shown=failed
    [ -n "$5" ] && shown="$5 s"
    printf '  %s run %d  %-58s %s%s\n' "$1" "$4" "$3" "$shown" "${8:+  ($8)}"
}
load_1m() { cut -d' ' -f1 /proc/loadavg; }

# run_py SYSTEM WORKLOAD DIR LIMIT_S: the Python driver in a process group of its own (a script
# has no job control, so setsid execs in place and $! leads the new group), stopped with whatever
# it started after LIMIT_S; its JSON lands in DIR/result.json. A failed run's log is kept in $LOGS.
run_py() {
    local system=$1 workload=$2 dir=$3 limit=$4
    mkdir -p "$dir"
    # TMPDIR: HyperQueue's workers and Dask make folders of their own in the temp dir; keep them
    # in the scratch folder, which the trap removes.
    TMPDIR=$dir setsid "$VENV/bin/python" "$ROOT/scripts/lib/peers.py" "$system" "$workload" \
        "$W1_TASKS" "$dir" >"$dir/driver.log" 2>&1 &
    local pgid=$! end=$((SECONDS + limit)) rc=0
    PGROUPS+=("$pgid")
    while kill -0 "$pgid" 2>/dev/null && ((SECONDS < end)); do sleep 0.1; done
    if kill -0 "$pgid" 2>/dev/null; then
        echo "peers.sh: timed out after $limit s" >>"$dir/driver.log"
        rc=124
    else
        wait "$pgid" || rc=$?
    fi
    stop_group "$pgid" # also whatever it left behind in its group (Ray's raylet, Dask's nanny)
    local keep=() g
    for g in "${PGROUPS[@]}"; do [ "$g" = "$pgid" ] || keep+=("$g"); done
    PGROUPS=("${keep[@]}")
    [ "$rc" = 0 ] && [ -s "$dir/result.json" ] && return 0
    cp "$dir/driver.log" "$LOGS/$(basename "$dir").log"
    return 1
}
py_field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }

# One W3 run of SYSTEM (rep REP).
w3_run() {
    local system=$1 rep=$2 d=$SCRATCH/w3-$1-$2 load t0 t1 end
    mkdir -p "$d"
    case "$system" in
        ballast-fifo|ballast-largest-first)
            local order=${system#ballast-}
            start_cluster "$d" 2 2 --order "$order"
            load=$(load_1m)
            t0=$EPOCHREALTIME
            "$MASTER" submit --master "$ADDR" --file "$W3_SLEEP" --wait >/dev/null 2>"$d/submit.err" &&
                t1=$EPOCHREALTIME || t1=
            stop_cluster
            record W3 "$system" "Ballast, sleep tasks, $order" "$rep" "${t1:+$(sub "$t1" "$t0")}" \
                "${t1:+$(sub "$t1" "$t0")}" "$load" "$([ -n "$t1" ] || echo "submit failed, see $d")"
            ;;
        ballast-processes)
            mkdir -p "$d/stamps"
            w3_ballast_commands "$d/w3.jsonl" "$d/stamps"
            start_cluster "$d" 2 2
            load=$(load_1m)
            t0=$EPOCHREALTIME
            "$MASTER" submit --master "$ADDR" --file "$d/w3.jsonl" --wait >/dev/null 2>"$d/submit.err" &&
                t1=$EPOCHREALTIME || t1=
            stop_cluster
            end=$(last_stamp "$d/stamps" 200)
            record W3 "$system" "Ballast, sh -c sleep processes, fifo" "$rep" \
                "${end:+$(sub "$end" "$t0")}" "${t1:+$(sub "$t1" "$t0")}" "$load" \
                "$([ -n "$end" ] || echo "not all 200 stamps written, see $d")"
            ;;
        parallel)
            mkdir -p "$d/stamps"
            w3_shell_lines "$d/w3.sh" "$d/stamps"
            load=$(load_1m)
            t0=$EPOCHREALTIME
            PARALLEL_SHELL=/bin/sh timeout 120 parallel --will-cite -j4 <"$d/w3.sh" >"$d/out.log" 2>&1 &&
                t1=$EPOCHREALTIME || t1=
            end=$(last_stamp "$d/stamps" 200)
            record W3 parallel "GNU parallel -j4, sh -c sleep processes" "$rep" \
                "${end:+$(sub "$end" "$t0")}" "${t1:+$(sub "$t1" "$t0")}" "$load" \
                "$([ -n "$end" ] || echo "not all 200 stamps written, see $d")"
            ;;
        dask|ray|hyperqueue)
            declare -A label=([dask]="Dask distributed, 2 workers x 2 threads, sleep function"
                [ray]="Ray, one node, num_cpus=4, sleep function"
                [hyperqueue]="HyperQueue, 2 workers x 2 cores, sh -c sleep processes")
            load=$(load_1m)
            if run_py "$system" w3 "$d" 150 && [ -s "$d/result.json" ]; then
                record W3 "$system" "${label[$system]}" "$rep" "$(py_field "$d/result.json" seconds)" \
                    "$(py_field "$d/result.json" client_seconds)" "$load" ""
            else
                record W3 "$system" "${label[$system]}" "$rep" "" "" "$load" \
                    "failed: $(tail -1 "$d/driver.log" | cut -c1-200)"
            fi
            ;;
    esac
}

# One W1 run of SYSTEM (rep REP): W1_TASKS `true` on 2 slots.
w1_run() {
    local system=$1 rep=$2 d=$SCRATCH/w1-$1-$2 load t0 t1
    mkdir -p "$d"
    case "$system" in
        xargs)
            load=$(load_1m)
            t0=$EPOCHREALTIME
            seq "$W1_TASKS" | xargs -P2 -n1 true && t1=$EPOCHREALTIME || t1=
            record W1 xargs "seq $W1_TASKS | xargs -P2 -n1 true" "$rep" "${t1:+$(sub "$t1" "$t0")}" \
                "${t1:+$(sub "$t1" "$t0")}" "$load" ""
            ;;
        ballast)
            start_cluster "$d" 2 1
            load=$(load_1m)
            t0=$EPOCHREALTIME
            "$MASTER" submit --master "$ADDR" --count "$W1_TASKS" --wait -- true >/dev/null 2>"$d/submit.err" &&
                t1=$EPOCHREALTIME || t1=
            stop_cluster
            record W1 ballast "Ballast, 2 workers x 1 slot, journal on" "$rep" \
                "${t1:+$(sub "$t1" "$t0")}" "${t1:+$(sub "$t1" "$t0")}" "$load" ""
            ;;
        parallel)
            load=$(load_1m)
            t0=$EPOCHREALTIME
            seq "$W1_TASKS" | timeout 300 parallel --will-cite -j2 true >/dev/null 2>"$d/err.log" &&
                t1=$EPOCHREALTIME || t1=
            record W1 parallel "seq $W1_TASKS | parallel -j2 true" "$rep" "${t1:+$(sub "$t1" "$t0")}" \
                "${t1:+$(sub "$t1" "$t0")}" "$load" ""
            ;;
        dask|ray|hyperqueue)
            declare -A label=([dask]="Dask distributed, 2 workers x 1 thread, subprocess.run(true)"
                [ray]="Ray, one node, num_cpus=2, subprocess.run(true)"
                [hyperqueue]="HyperQueue, 2 workers x 1 core, program true")
            load=$(load_1m)
            if run_py "$system" w1 "$d" 300 && [ -s "$d/result.json" ]; then
                record W1 "$system" "${label[$system]}" "$rep" "$(py_field "$d/result.json" seconds)" \
                    "$(py_field "$d/result.json" client_seconds)" "$load" ""
            else
                record W1 "$system" "${label[$system]}" "$rep" "" "" "$load" \
                    "failed: $(tail -1 "$d/driver.log" | cut -c1-200)"
            fi
            ;;
    esac
}

# ---- the runs ---------------------------------------------------------------------------------------
runnable() { want_system "$1" && [ -z "${SKIP[$1]:-}" ]; }
W3_SYSTEMS=() W1_SYSTEMS=()
if want_workload W3; then
    runnable ballast && W3_SYSTEMS+=(ballast-fifo ballast-largest-first ballast-processes)
    for s in parallel hyperqueue dask ray; do runnable "$s" && W3_SYSTEMS+=("$s"); done
fi
if want_workload W1; then
    W1_SYSTEMS+=(xargs) # the reference of every W1 ratio
    for s in ballast parallel hyperqueue dask ray; do runnable "$s" && W1_SYSTEMS+=("$s"); done
fi
UPTIME_BEFORE=$(uptime)
echo "peers: $(nproc) cores, repeat $REPEAT, load: $UPTIME_BEFORE"
for s in "${!SKIP[@]}"; do echo "  skipped $s: ${SKIP[$s]}"; done
STARTED=$SECONDS
for ((rep = 1; rep <= REPEAT; rep++)); do
    # Rotate the order each repetition, so slow drift in the machine's load spreads over systems.
    n=${#W3_SYSTEMS[@]}
    for ((k = 0; k < n; k++)); do w3_run "${W3_SYSTEMS[(k + rep - 1) % n]}" "$rep"; done
    n=${#W1_SYSTEMS[@]}
    for ((k = 0; k < n; k++)); do w1_run "${W1_SYSTEMS[(k + rep - 1) % n]}" "$rep"; done
done
UPTIME_AFTER=$(uptime)

# ---- summary ------------------------------------------------------------------------------------------
versions=$OUT/peers-versions.tsv skips=$OUT/peers-skipped.tsv
: >"$versions"
: >"$skips"
for s in "${!VERSION[@]}"; do printf '%s\t%s\n' "$s" "${VERSION[$s]}" >>"$versions"; done
for s in "${!SKIP[@]}"; do printf '%s\t%s\n' "$s" "${SKIP[$s]}" >>"$skips"; done
python3 - "$RUNS" "$versions" "$skips" "$OUT/peers.json" "$COMMIT" "$DIRTY" "$REPEAT" \
    "$UPTIME_BEFORE" "$UPTIME_AFTER" "$((SECONDS - STARTED))" "$W1_TASKS" <<'EOF'
import json, os, platform, statistics, sys, time
runs_path, versions_path, skips_path, out_path, commit, dirty, repeat, up0, up1, elapsed, w1 = sys.argv[1:]
W3_BOUND_S = sum(1.0 if i % 10 == 9 else (0.02, 0.05, 0.2)[i % 3] for i in range(200)) / 4
W1_TASKS = int(w1)

def tsv(path):
    return dict(line.rstrip("\n").split("\t", 1) for line in open(path) if "\t" in line)

runs = [json.loads(line) for line in open(runs_path)]
versions, skipped = tsv(versions_path), tsv(skips_path)
version_of = lambda system: versions.get(system.split("-")[0], "?")
xargs_by_rep = {r["rep"]: W1_TASKS / r["seconds"] for r in runs
                if r["workload"] == "W1" and r["system"] == "xargs" and r["seconds"]}
rows = []
for key in dict.fromkeys((r["workload"], r["system"]) for r in runs):
    rs = [r for r in runs if (r["workload"], r["system"]) == key]
    ok = [r for r in rs if r["seconds"] is not None]
    row = {"workload": key[0], "system": key[1], "label": rs[0]["label"],
           "version": version_of(key[1]), "runs": len(rs), "failed_runs": len(rs) - len(ok),
           "seconds": [r["seconds"] for r in rs], "client_seconds": [r["client_seconds"] for r in rs],
           "load_1m": [r["load_1m"] for r in rs],
           "notes": sorted({r["note"] for r in rs if r["note"]})}
    if ok:
        med = statistics.median(r["seconds"] for r in ok)
        if key[0] == "W3":
            row.update(median_makespan_s=round(med, 4), lower_bound_s=W3_BOUND_S,
                       ratio=round(med / W3_BOUND_S, 4),
                       ratios=[round(r["seconds"] / W3_BOUND_S, 4) for r in ok])
        else:
            rate = [W1_TASKS / r["seconds"] for r in ok]
            row.update(median_tasks_per_s=round(statistics.median(rate), 1),
                       tasks_per_s=[round(x, 1) for x in rate])
            same_run = [W1_TASKS / r["seconds"] / xargs_by_rep[r["rep"]] for r in ok
                        if r["rep"] in xargs_by_rep]
            if same_run:
                row.update(ratio_to_xargs=round(statistics.median(same_run), 3),
                           ratios_to_xargs=[round(x, 3) for x in same_run])
    rows.append(row)

doc = {"generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": commit,
       "tracked_files_modified": int(dirty or 0),
       "host": {"cpus": os.cpu_count(), "kernel": platform.release()},
       "uptime_before": up0.strip(), "uptime_after": up1.strip(), "repeat": int(repeat),
       "runtime_s": int(elapsed), "w1_tasks": W1_TASKS, "versions": versions, "skipped": skipped,
       "w3_lower_bound_s": W3_BOUND_S, "rows": rows, "runs": runs}
with open(out_path, "w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")

print(f"\npeers at {commit}{' (+%s modified)' % dirty if int(dirty or 0) else ''}, median of {repeat}; "
      f"W3 ratio = makespan / {W3_BOUND_S:.2f} s; W1 ({W1_TASKS} true) ratio = tasks/s / xargs -P2 "
      "of the same run")
print(f"{'wl':3} {'system':58} {'version':36} {'figure':>10} {'ratio':>6} {'runs':>11}  load (1 min)")
for r in rows:
    spread = r.get("ratios") or r.get("ratios_to_xargs") or []
    spread = f"{min(spread):.3f}-{max(spread):.3f}" if spread else "-"
    if "ratio" in r:
        fig, ratio = f"{r['median_makespan_s']:.3f} s", f"{r['ratio']:.3f}"
    elif "median_tasks_per_s" in r:
        fig, ratio = f"{r['median_tasks_per_s']:.0f}/s", f"{r.get('ratio_to_xargs', float('nan')):.3f}"
    else:
        fig, ratio = "failed", "-"
    loads = ",".join(str(x) for x in r["load_1m"])
    why = r["notes"][0] if r["notes"] else "see the logs"
    fail = f"  ({r['failed_runs']} failed: {why})" if r["failed_runs"] else ""
    print(f"{r['workload']:3} {r['label'][:58]:58} {r['version'][:36]:36} {fig:>10} {ratio:>6} {spread:>11}  {loads}{fail}")
for system, why in sorted(skipped.items()):
    print(f"skipped {system}: {why}")
print(f"load before: {up0.strip()}\nload after:  {up1.strip()}\nwrote {out_path}; {elapsed} s of runs")
EOF
