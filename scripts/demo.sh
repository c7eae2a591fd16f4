#!/usr/bin/env bash
# The README's main job: build Ballast, start a master and three workers on loopback, submit a mixed
# batch, SIGKILL one worker mid-run, wait, and show where every task went. Then stop everything.
#
#   scripts/demo.sh                      # run folder: demo-run/ in the repo (emptied at start)
#   BALLAST_DEMO_DIR=/tmp/d scripts/demo.sh
#
# Needs only a Rust toolchain, bash and coreutils. Works without a terminal (CI). Exits non-zero if
# the cluster did not behave as designed (see the checks at the end), so CI can run it as a test.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${BALLAST_DEMO_DIR:-$root/demo-run}

# Batch shape. Three workers with two slots each; worker-2 is the one that gets killed. worker-3
# also prefetches two tasks beyond its slots, which the master takes back when another worker idles.
workers=3
slots=2
victim=worker-2
prefetcher=worker-3

say() { printf '\n== %s\n' "$*"; }
die() {
  printf 'demo.sh: %s\n' "$*" >&2
  exit 1
}

# --- processes: every PID we start is recorded here and stopped by cleanup, never by name ---------
master_pid=
client_pid=
declare -A worker_pid=()

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local first=() all=() pid
  # Client and workers first, and the master once they are gone, so the workers' logs do not end
  # with "lost the master" and the master's says each worker `left`.
  [[ -n $client_pid ]] && first+=("$client_pid")
  for pid in "${worker_pid[@]}"; do first+=("$pid"); done
  all=("${first[@]}")
  [[ -n $master_pid ]] && all+=("$master_pid")
  stop_all "${first[@]}"
  [[ -n $master_pid ]] && stop_all "$master_pid"
  ((${#all[@]})) && echo "stopped everything the demo started (pids ${all[*]})"
  exit "$status"
}

# SIGTERM to each pid, 5 s to exit, then SIGKILL whatever is left. bash reaps background children
# as they exit, so `kill -0` fails once a process is gone.
stop_all() {
  (($#)) || return 0
  local pid end=$((SECONDS + 5))
  kill -TERM "$@" 2>/dev/null || true
  for pid in "$@"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < end)); do sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Polls `$@` every 50 ms until it succeeds; fails the demo after $limit seconds.
eventually() {
  local limit=$1 what=$2
  shift 2
  local end=$((SECONDS + limit))
  until "$@"; do
    ((SECONDS < end)) || die "timed out after ${limit}s waiting for $what"
    [[ -z $master_pid ]] || kill -0 "$master_pid" 2>/dev/null ||
      die "the master exited; see $dir/master.log"
    sleep 0.05
  done
}

# --- build ------------------------------------------------------------------------------------------
say "building (cargo build --release --workspace; the first build takes a few minutes)"
cd "$root"
# cargo's own progress (on stderr), so a first build is not minutes of silence.
cargo build --release --workspace
# The target directory may be moved by CARGO_TARGET_DIR or a cargo config; ask cargo where it is.
target=$(cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
master="$target/release/master"
worker="$target/release/worker"
[[ -x $master && -x $worker ]] || die "built binaries not found under $target/release"

# --- run folder ---------------------------------------------------------------------------------------
# Only an empty folder or one this script made (it holds the marker) is ever emptied.
marker=.ballast-demo-run
if [[ -e $dir && -n $(ls -A "$dir" 2>/dev/null) && ! -f $dir/$marker ]]; then
  die "$dir exists and was not made by demo.sh; remove it or set BALLAST_DEMO_DIR"
fi
rm -rf "$dir"
mkdir -p "$dir"
touch "$dir/$marker"
echo '*' >"$dir/.gitignore" # keeps the run out of `git status`
started=$SECONDS

# --- master -------------------------------------------------------------------------------------------
say "starting a master on a free loopback port"
"$master" --listen 127.0.0.1:0 --port-file "$dir/addr" --data-dir "$dir/ballast-data" \
  --http 127.0.0.1:0 --http-port-file "$dir/http-addr" >"$dir/master.log" 2>&1 &
master_pid=$!
eventually 10 "the master's port file" test -s "$dir/addr"
BALLAST_MASTER=$(cat "$dir/addr")
export BALLAST_MASTER
echo "master pid $master_pid listening on $BALLAST_MASTER (BALLAST_MASTER=$BALLAST_MASTER)"
echo "dashboard and HTTP API on http://$(cat "$dir/http-addr")/"

# --- workers ------------------------------------------------------------------------------------------
say "starting $workers workers with $slots slots each"
for i in $(seq 1 "$workers"); do
  extra=()
  [[ worker-$i == "$prefetcher" ]] && extra=(--prefetch 2)
  "$worker" --name "worker-$i" --slots "$slots" "${extra[@]}" >"$dir/worker-$i.log" 2>&1 &
  worker_pid[worker-$i]=$!
  echo "worker-$i pid $!"
done

# The status JSON is compact, so counting a fixed substring is enough (no JSON tool needed).
alive_workers() {
  local n
  n=$("$master" status --json 2>/dev/null | grep -o '"state":"alive"' | wc -l) || true
  echo $((n + 0))
}
all_alive() { (($(alive_workers) == workers)); }
eventually 20 "$workers workers to join" all_alive
"$master" status

# --- the batch ----------------------------------------------------------------------------------------
say "submitting a mixed batch"
# submit WHAT ARGS...: runs `master submit --json ARGS...` and prints one line per submission.
total=0
submit() {
  local what=$1
  shift
  local out ids
  out=$("$master" submit --json "$@")
  # Only the ids: the object also names the job (`"job": J`).
  out=$(grep -o '"ids":\[[0-9,]*\]' <<<"$out")
  read -ra ids <<<"$(grep -o '[0-9][0-9]*' <<<"$out" | paste -sd' ' -)"
  total=$((total + ${#ids[@]}))
  first_id=${ids[0]}
  local range=${ids[0]}
  ((${#ids[@]} == 1)) || range+="-${ids[-1]}"
  printf '  %3d  %-46s ids %s\n' "${#ids[@]}" "$what" "$range"
}

# Part of the batch comes from a JSON-lines file (one task per line; see `master submit --help`).
cat >"$dir/tasks.jsonl" <<'EOF'
# one task per line: exactly one of cmd / sleep / spin, the rest optional
{"cmd": ["sh", "-c", "echo task file says hi from $(uname -n)"], "priority": 1}
{"cmd": ["sh", "-c", "seq 1 200000 | sha256sum"], "size": 2}
{"sleep": "400ms", "priority": 2}
{"sleep": "400ms", "priority": 2}
{"spin": "300ms", "size": 3}
{"spin": "300ms", "size": 3}
{"sleep": "250ms", "priority": -1}
{"sleep": "250ms", "priority": -1}
{"cmd": ["sleep", "5"], "timeout": "300ms"}
{"cmd": ["sh", "-c", "echo 'this one fails on purpose' >&2; exit 3"]}
EOF
failing=2 # in the file: the timeout and the `exit 3`

submit "sleep 600ms (synthetic)" --count 16 --sleep 600ms
submit "spin 400ms (synthetic, burns a CPU)" --count 8 --spin 400ms
submit "sh -c 'echo hello from \$(uname -n); sleep 0.3'" --count 6 -- sh -c 'echo "hello from $(uname -n)"; sleep 0.3'
hello_id=$first_id
submit "sh -c 'seq 1 300000 | sha256sum' (CPU)" --count 4 -- sh -c 'seq 1 300000 | sha256sum'
submit "tasks.jsonl (10 lines, 2 fail)" --file "$dir/tasks.jsonl"
submit "exit 3 (fails on purpose)" --count 2 -- sh -c 'echo "exiting with 3" >&2; exit 3'
exit3_id=$first_id
submit "a program that does not exist (fails)" -- /nonexistent/ballast-demo-program
missing_id=$first_id
failing=$((failing + 3))
submit "priority 9 sleep 200ms (jumps the queue)" --priority 9 --count 6 --sleep 200ms
submit "sleep 1 as 2 copies on 2 workers (first wins)" --replicas 2 -- sleep 1
replicated_id=$first_id
echo "  ${total} tasks, ${failing} of them fail by design"

# --- kill a worker mid-run ------------------------------------------------------------------------------
# status --json field of one worker, e.g. `worker_field worker-2 running`.
worker_field() {
  "$master" status --json 2>/dev/null | grep -o "\"name\":\"$1\"[^}]*" |
    sed -n "s/.*\"$2\":\"\{0,1\}\([^\",]*\).*/\1/p" || true
}
finished_count() {
  local s
  local ok bad
  s=$("$master" status --json 2>/dev/null) || {
    echo 0
    return
  }
  ok=$(sed -n 's/.*"succeeded":\([0-9]*\).*/\1/p' <<<"$s")
  bad=$(sed -n 's/.*"failed":\([0-9]*\).*/\1/p' <<<"$s")
  echo $((${ok:-0} + ${bad:-0}))
}
# Kill once a fair part of the batch is done and the victim is busy, so its tasks must move.
victim_busy() {
  local running
  running=$(worker_field "$victim" running)
  (($(finished_count) >= total / 4 && ${running:-0} > 0))
}
eventually 30 "$victim to be running tasks" victim_busy
running=$(worker_field "$victim" running)
kill -KILL "${worker_pid[$victim]}"
wait "${worker_pid[$victim]}" 2>/dev/null || true
echo
echo ">>> killed $victim (pid ${worker_pid[$victim]}) with SIGKILL while it ran $running tasks;" \
  "$(finished_count) of $total were finished"
unset "worker_pid[$victim]"

# --- wait ---------------------------------------------------------------------------------------------
say "master wait (a progress bar on a terminal)"
# In the background, polled against a deadline: a signal to this script is handled at once, and
# a cluster that stops making progress fails the demo instead of hanging it.
"$master" wait &
client_pid=$!
client_done() { ! kill -0 "$client_pid" 2>/dev/null; }
eventually 60 "master wait to return" client_done
wait_status=0
wait "$client_pid" || wait_status=$?
client_pid=
if ((wait_status == 1)); then
  echo "(exit status 1 is expected: $failing tasks fail by design, and wait reports any failure)"
elif ((wait_status != 0)); then
  die "master wait exited with $wait_status"
fi

# --- report ---------------------------------------------------------------------------------------------
say "master results"
"$master" results

say "master status ($victim is dead)"
"$master" status

results=$("$master" results --json)
# One match per task: the contract's leading fields, in order (id, state, exit_code, worker, attempts).
rows=$(grep -o '"id":[0-9]*,"state":"[a-z_]*","exit_code":[^,]*,"worker":[^,]*,"attempts":[0-9]*' \
  <<<"$results" || true)

say "tasks finished per worker (from results --json)"
sed -n 's/.*"worker":"\([^"]*\)".*/\1/p' <<<"$rows" | sort | uniq -c
say "tasks per final state"
sed -n 's/.*"state":"\([a-z_]*\)".*/\1/p' <<<"$rows" | sort | uniq -c
# The replicated task counts its two copies as two attempts; it is not a re-run.
rerun=$(grep -v -e '"attempts":1$' -e "^\"id\":$replicated_id," <<<"$rows" |
  sed -n 's/^"id":\([0-9]*\),.*/\1/p' | paste -sd' ' -) || true
echo "re-run after the kill (attempts > 1): ${rerun:-none}"

say "what some tasks said (results --json ID)"
# field ID NAME: a string field of one task, JSON escapes left as they are (\n stays visible).
field() {
  local re='"'$2'":"([^"\\]|\\.)*"'
  "$master" results --json "$1" | grep -oE "$re" | head -n 1 | sed "s/^\"$2\":\"//; s/\"\$//"
}
echo "task $hello_id stdout: $(field "$hello_id" stdout)"
echo "task $exit3_id stderr: $(field "$exit3_id" stderr)"
echo "task $missing_id error:  $(field "$missing_id" error)"
copies=$("$master" results --json "$replicated_id" | grep -o '"copies":[0-9]*' | head -n 1)
echo "task $replicated_id (--replicas 2): ${copies#\"copies\":} copies ran, one outcome"

say "from the master log"
grep -E 'listening|joined|lost|re-queued|stale|rebalanc|displaces|copy 2 of' "$dir/master.log" || true

# --- check: the run went as designed ----------------------------------------------------------------
count() { grep -c "$1" <<<"$rows" || true; }
n_rows=$(grep -c . <<<"$rows" || true)
n_ok=$(count '"state":"succeeded"')
((n_rows == total)) || die "expected $total results, got $n_rows"
((n_ok == total - failing)) || die "expected $((total - failing)) tasks to succeed, got $n_ok"
[[ $(worker_field "$victim" state) == dead ]] || die "$victim is not reported dead"
[[ -n $rerun ]] || die "no task was re-run after killing $victim"
grep -q 're-queued' "$dir/master.log" || die "the master log does not mention re-queued tasks"
((wait_status == 1)) || die "master wait should exit 1 when tasks fail (got $wait_status)"

say "done in $((SECONDS - started)) s: $n_ok of $total succeeded, $failing failed by design," \
  "$victim's tasks re-ran elsewhere"
echo "logs: $dir/{master,worker-1,worker-2,worker-3}.log"
echo "to watch the next run live, in another terminal: tail -F $dir/master.log"
echo "(run the demo with RUST_LOG=debug to log every task)"
