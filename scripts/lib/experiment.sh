# shellcheck shell=bash
# What scripts/experiments.sh and scripts/redundancy-experiments.sh share: the checks, process
# bookkeeping (every PID recorded, stopped by the trap, never by name), the private release build,
# the W3 workload and starting a master. Source it after setting:
#   script       the caller's name, for messages
#   work_prefix  the name of its temporary run folder
# It defines root, out, reps, started, die, pids, stop_pids, work, master, worker, commit, dirty,
# write_w3 FILE, start_master DIR ARGS... (sets addr and mpid) and wait_alive ADDR N DIR.
export LC_ALL=C # EPOCHREALTIME and printf use the locale's decimal point

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=$root/experiments
reps=${BALLAST_EXP_REPS:-3}
started=$SECONDS

die() {
  printf '%s: %s\n' "$script" "$*" >&2
  exit 1
}
[[ ${BASH_VERSINFO[0]} -ge 5 ]] || die "needs bash 5 (for EPOCHREALTIME)"
command -v python3 >/dev/null || die "needs python3 for the summary"
[[ $reps =~ ^[1-9][0-9]*$ ]] || die "BALLAST_EXP_REPS must be a positive integer"

# --- processes ---------------------------------------------------------------------------------------
pids=()
work=
stop_pids() {
  # TERM, up to 5 s grace, then KILL; `kill -0` fails once bash has reaped the child.
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  local end=$((SECONDS + 5)) pid
  for pid in "$@"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < end)); do sleep 0.02; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_pids "${pids[@]}"
  if [[ -n $work && -d $work ]]; then
    if [[ -n ${BALLAST_EXP_KEEP:-} || $status -ne 0 ]]; then
      echo "run folder kept: $work" >&2
    else
      rm -rf "$work"
    fi
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build -------------------------------------------------------------------------------------------
echo "== building (cargo build --release --workspace)"
cd "$root"
cargo build --release --workspace --quiet
target=$(cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
work=$(mktemp -d "${TMPDIR:-/tmp}/$work_prefix.XXXXXX")
# A private copy of the binaries: other people rebuilding the workspace meanwhile cannot swap them
# under a half-finished experiment.
cp "$target/release/master" "$target/release/ballast-master" "$target/release/worker" "$work/"
master=$work/master
worker=$work/worker
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null | grep -c . || true)

# --- workloads and cluster ---------------------------------------------------------------------------
# write_w3 FILE: task i sleeps 1.0 s if i % 10 == 9, else (0.02, 0.05, 0.2)[i % 3] s; size =
# duration. Lower bound on 4 slots: 36.2 / 4 = 9.05 s.
write_w3() {
  local ms=(20 50 200) sz=(0.02 0.05 0.2) i
  : >"$1"
  for ((i = 0; i < 200; i++)); do
    if ((i % 10 == 9)); then
      printf '{"sleep": "1000ms", "size": 1.0, "priority": 0}\n' >>"$1"
    else
      printf '{"sleep": "%sms", "size": %s, "priority": 0}\n' "${ms[i % 3]}" "${sz[i % 3]}" >>"$1"
    fi
  done
}

# start_master DIR ARGS...: `master serve` on a free loopback port with ARGS, logging to
# DIR/master.log; sets addr and mpid (also recorded in pids).
start_master() {
  local d=$1
  shift
  "$master" serve --listen 127.0.0.1:0 --port-file "$d/addr" --http off "$@" >"$d/master.log" 2>&1 &
  mpid=$!
  pids+=("$mpid")
  local end=$((SECONDS + 10))
  until [[ -s $d/addr ]]; do
    kill -0 "$mpid" 2>/dev/null || die "master exited at start; see $d/master.log"
    ((SECONDS < end)) || die "no port file after 10 s; see $d/master.log"
    sleep 0.02
  done
  addr=$(cat "$d/addr")
}

# wait_alive ADDR N DIR: until the master reports N alive workers (at most 10 s).
wait_alive() {
  local end=$((SECONDS + 10))
  until [[ $("$master" status --master "$1" --json 2>/dev/null | grep -o '"state":"alive"' | wc -l) -eq $2 ]]; do
    ((SECONDS < end)) || die "workers did not join within 10 s; see $3/"
    sleep 0.02
  done
}
