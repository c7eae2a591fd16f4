#!/usr/bin/env bash
# W7's timeline (issue 13): where the milliseconds of one `master submit --wait -- true` go.
#
# Usage: scripts/w7-timeline.sh [--no-journal] [--runs N]   (root, or perf_event_paranoid <= -1)
#
# Starts a master (journal on unless --no-journal) and two `worker --slots 1` from target/release,
# then records the whole machine with `perf trace -a` (the syscalls each step begins or ends
# with: the shell's clone, connect, sendto, recvfrom, fsync, fdatasync, clone3, wait4, exit_group,
# and the sched_process_exec tracepoint rather than execve, whose failed PATH probes would each
# pay the tracing cost) while N
# (default 25) `submit --wait -- true` run 60 ms apart, and prints each step's median and
# quartiles across the runs (scripts/w7_timeline.py). The client runs as a copy named `mcli`,
# so its syscalls are told from the master's by name. Tracing slows every traced syscall by
# some microseconds, so the total is above the untraced W7 figure printed beside it (the same
# cluster, the same N, right after). Stops what it started, by PID.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
JOURNAL=1
RUNS=25
while [ $# -gt 0 ]; do
    case "$1" in
        --no-journal) JOURNAL=0 ;;
        --runs) RUNS=$2; shift ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "w7-timeline.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
command -v perf >/dev/null || { echo "w7-timeline.sh: needs perf" >&2; exit 2; }

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/ballast-w7.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$SCRATCH"
}
trap cleanup EXIT
cp "$BIN/master" "$BIN/ballast-master" "$BIN/worker" "$SCRATCH/"
cp "$BIN/master" "$SCRATCH/mcli"

jargs=(--data-dir "$SCRATCH/data")
[ "$JOURNAL" = 0 ] && jargs=(--no-journal)
"$SCRATCH/master" serve --listen 127.0.0.1:0 --port-file "$SCRATCH/port" --http off "${jargs[@]}" \
    >"$SCRATCH/master.log" 2>&1 &
MPID=$!
PIDS+=("$MPID")
for _ in $(seq 250); do [ -s "$SCRATCH/port" ] && break; sleep 0.02; done
ADDR=$(cat "$SCRATCH/port")
WPIDS=()
for i in 1 2; do
    "$SCRATCH/worker" --master "$ADDR" --slots 1 --name "w7t-$i" >"$SCRATCH/worker$i.log" 2>&1 &
    WPIDS+=("$!")
    PIDS+=("$!")
done
for _ in $(seq 100); do
    alive=$("$SCRATCH/master" status --master "$ADDR" --json 2>/dev/null | grep -o '"alive"' | wc -l || true)
    [ "$alive" -ge 2 ] && break
    sleep 0.1
done
# Warm the page cache and the master's first-task paths.
for _ in 1 2 3; do "$SCRATCH/mcli" submit --master "$ADDR" --wait -- true >/dev/null; done

echo "load: $(cut -d' ' -f1-3 /proc/loadavg); journal: $([ "$JOURNAL" = 1 ] && echo on || echo off); runs: $RUNS"
perf trace -a -e 'clone,connect,sendto,recvfrom,fsync,fdatasync,clone3,wait4,exit_group,sched:sched_process_exec' \
    -o "$SCRATCH/trace" -- bash -c "sleep 0.2; for i in \$(seq $RUNS); do
        '$SCRATCH/mcli' submit --master '$ADDR' --wait -- true >/dev/null; sleep 0.06; done"
[ -n "${W7_TRACE_COPY:-}" ] && cp "$SCRATCH/trace" "$W7_TRACE_COPY"
python3 "$ROOT/scripts/w7_timeline.py" "$SCRATCH/trace" "$MPID" "${WPIDS[@]}"

# The same command untraced, for the tracing overhead.
samples=()
for _ in $(seq "$RUNS"); do
    t0=${EPOCHREALTIME//[.,]/}
    "$SCRATCH/mcli" submit --master "$ADDR" --wait -- true >/dev/null
    t1=${EPOCHREALTIME//[.,]/}
    samples+=("$((t1 - t0))")
done
printf '%s\n' "${samples[@]}" | sort -n |
    awk '{ v[NR] = $1 } END { printf "untraced submit --wait -- true from bash: median %.3f ms\n", v[int((NR + 1) / 2)] / 1000 }'
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
