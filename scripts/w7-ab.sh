#!/usr/bin/env bash
# W7 A/B: one command from the shell on two builds side by side. Starts a cluster per binary folder
# (master with its journal, two `worker --slots 1`), then alternates `master submit --wait -- true`
# between them, sample by sample, with `/bin/true` before each pair, so drifting load hits both
# alike. Prints the medians and each one's ratio to `/bin/true`'s (the W7 row of bench.sh).
#
#   scripts/w7-ab.sh DIR_A DIR_B [SAMPLES]      # each DIR holds master, ballast-master, worker
#   W7_MASTER_ARGS=--no-journal scripts/w7-ab.sh old/ new/
#
# Figures: docs/PERFORMANCE.md (issue 13, W7).
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,9p' "$0" >&2; exit 2; }
DIRS=("$1" "$2")
SAMPLES=${3:-40}
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/ballast-w7ab.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$SCRATCH"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ADDRS=()
for k in 0 1; do
    dir=${DIRS[$k]}
    for b in master ballast-master worker; do
        [ -x "$dir/$b" ] || { echo "w7-ab.sh: no $dir/$b" >&2; exit 2; }
    done
    # shellcheck disable=SC2086 # extra master arguments, split on purpose
    "$dir/master" serve --listen 127.0.0.1:0 --port-file "$SCRATCH/port$k" --http off \
        --data-dir "$SCRATCH/data$k" ${W7_MASTER_ARGS:-} 2>"$SCRATCH/master$k.log" &
    PIDS+=($!)
    for _ in $(seq 100); do [ -s "$SCRATCH/port$k" ] && break; sleep 0.05; done
    [ -s "$SCRATCH/port$k" ] || { echo "w7-ab.sh: master in $dir did not start" >&2; exit 1; }
    ADDRS+=("$(cat "$SCRATCH/port$k")")
    for w in 1 2; do
        "$dir/worker" --master "${ADDRS[$k]}" --slots 1 --name "w$k-$w" 2>"$SCRATCH/worker$k-$w.log" &
        PIDS+=($!)
    done
done
for k in 0 1; do
    for _ in $(seq 100); do
        alive=$("${DIRS[$k]}/master" status --master "${ADDRS[$k]}" --json 2>/dev/null |
            grep -o '"state":"alive"' | wc -l || true)
        [ "$alive" -ge 2 ] && break
        sleep 0.05
    done
done

ms() { echo "($2 - $1) * 1000" | bc -l; }
median() { sort -g | awk '{ a[NR] = $1 } END { printf "%.3f", (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
true_ms=() a_ms=() b_ms=()
for _ in $(seq "$SAMPLES"); do
    t0=$EPOCHREALTIME; /bin/true; t1=$EPOCHREALTIME
    true_ms+=("$(ms "$t0" "$t1")")
    for k in 0 1; do
        t0=$EPOCHREALTIME
        "${DIRS[$k]}/master" submit --master "${ADDRS[$k]}" --wait -- true >/dev/null
        t1=$EPOCHREALTIME
        if [ "$k" = 0 ]; then a_ms+=("$(ms "$t0" "$t1")"); else b_ms+=("$(ms "$t0" "$t1")"); fi
    done
done
t=$(printf '%s\n' "${true_ms[@]}" | median)
a=$(printf '%s\n' "${a_ms[@]}" | median)
b=$(printf '%s\n' "${b_ms[@]}" | median)
printf '/bin/true %s ms; A %s ms (%.2fx) %s; B %s ms (%.2fx) %s\n' "$t" \
    "$a" "$(echo "$a / $t" | bc -l)" "${DIRS[0]}" "$b" "$(echo "$b / $t" | bc -l)" "${DIRS[1]}"
