#!/usr/bin/env bash
# Rebalancing, speculation and replicas on a real loopback cluster. See docs/EXPERIMENTS.md,
# section 3.
#
#   scripts/redundancy-experiments.sh                  # ~3 minutes on 2 cores; writes experiments/redundancy.json
#   BALLAST_EXP_REPS=1 scripts/redundancy-experiments.sh   # one run per configuration
#   BALLAST_EXP_KEEP=1 scripts/redundancy-experiments.sh   # keep the run folder (logs, raw results)
#
# Every run gets a fresh `master serve --no-journal` and workers with `--slots 2` on 127.0.0.1.
# Makespan is the wall time of one `master submit ... --wait` command. Configurations are
# interleaved (rep 1 of all, then rep 2, ...) so a burst of outside load does not land on one only.
#
# 1a. W3 (200 tasks, as in experiments.sh), 2 workers, order fifo: --prefetch 0 / 2 / 8.
# 1b. A late joiner: w1 (--prefetch 8, or 0) gets 10 x `--sleep 1s`; w2 joins 0.3 s after the submit.
# 1c. Uniform 200 x 50 ms (where dispatch latency shows most): --prefetch 0 / 2 / 8.
# 2.  Stragglers: 60 x `sh -c` that sleeps 2 s with probability 13/256 (about 5 %), else 0.2 s,
#     `--size 1`: plain, master `--speculate 3`, and `submit --replicas 2`.
#
# All tasks sleep; nothing spins, so the runs stay light on a shared machine. Needs a Rust
# toolchain, bash 5, coreutils and python3 (only for the summary). Every process it starts is
# recorded by PID and stopped by the trap; nothing is ever killed by name.
set -euo pipefail
script=redundancy-experiments.sh
work_prefix=ballast-redundancy
# shellcheck source=scripts/lib/experiment.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/experiment.sh"

# --- workloads -------------------------------------------------------------------------------------
# W3, exactly as experiments.sh makes it (bound 9.05 s on 4 slots).
w3=$work/w3.jsonl
write_w3 "$w3"
# The straggler task: one byte of /dev/urandom below 13 (13/256 = 5.1 %) sleeps 2 s, else 0.2 s.
# Every copy rolls again. Single quotes on purpose: the task's shell expands it, not this one.
# shellcheck disable=SC2016
straggler='if [ $(od -An -N1 -tu1 /dev/urandom) -lt 13 ]; then sleep 2; else sleep 0.2; fi'

# --- one run ---------------------------------------------------------------------------------------
runs=$work/runs.jsonl
: >"$runs"
nrun=0
# cluster_run EXP CONFIG REP PREFETCH LATE(0|1) MASTER_ARGS(one word, may be empty) -- SUBMIT_ARGS...
# Starts a master and w1 (and w2 at once, or 0.3 s after the submit when LATE is 1), times one
# `master submit ... --wait --json`, collects results and logs, and stops everything it started.
cluster_run() {
  local exp=$1 config=$2 rep=$3 prefetch=$4 late=$5 margs=$6
  [[ ${7:-} == -- ]] || die "cluster_run: expected -- after six arguments"
  shift 7
  nrun=$((nrun + 1))
  local d=$work/run-$nrun
  mkdir -p "$d"
  printf '%s\0' "$@" >"$d/submit.args" # the exact command, for the summary
  local extra=()
  [[ -n $margs ]] && read -r -a extra <<<"$margs"
  local addr mpid
  start_master "$d" --no-journal --order fifo "${extra[@]}"
  local wargs=(--master "$addr" --slots 2 --prefetch "$prefetch")
  "$worker" "${wargs[@]}" --name w1 >"$d/w1.log" 2>&1 &
  pids+=("$!")
  local want=2
  if ((late)); then
    want=1
  else
    "$worker" "${wargs[@]}" --name w2 >"$d/w2.log" 2>&1 &
    pids+=("$!")
  fi
  wait_alive "$addr" "$want" "$d"
  local load
  load=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo null)
  # The measured section: exactly one client command (in the background when w2 joins late).
  local t0 t1 rc=0 tjoin=null
  t0=$EPOCHREALTIME
  if ((late)); then
    "$master" submit --master "$addr" --wait --json "$@" >"$d/submit.json" 2>"$d/submit.err" &
    local spid=$!
    pids+=("$spid")
    sleep 0.3
    tjoin=$EPOCHREALTIME
    "$worker" "${wargs[@]}" --name w2 >"$d/w2.log" 2>&1 &
    local w2pid=$!
    pids+=("$w2pid")
    wait "$spid" || rc=$?
    # Reaped: drop it, so a recycled PID is never signalled.
    pids=("${pids[@]:0:${#pids[@]}-2}" "$w2pid")
  else
    "$master" submit --master "$addr" --wait --json "$@" >"$d/submit.json" 2>"$d/submit.err" || rc=$?
  fi
  t1=$EPOCHREALTIME
  "$master" results --master "$addr" --json >"$d/results.json" 2>/dev/null || true
  stop_pids "${pids[@]}"
  pids=()
  printf '{"experiment":"%s","config":"%s","rep":%d,"prefetch":%d,"master_args":"%s","t0":%s,"t1":%s,"w2_started":%s,"rc":%d,"loadavg_1m":%s,"dir":"%s"}\n' \
    "$exp" "$config" "$rep" "$prefetch" "$margs" "$t0" "$t1" "$tjoin" "$rc" "$load" "$d" >>"$runs"
  printf '  rep %d  %-11s %-14s %6.3f s%s\n' "$rep" "$exp" "$config" \
    "$(python3 -c "print($t1 - $t0)")" "$( ((rc == 0)) || echo "  (submit exited $rc)")"
}

echo "== real cluster on loopback, $reps repetitions, interleaved"
for ((rep = 1; rep <= reps; rep++)); do
  for k in 0 2 8; do
    cluster_run w3 "prefetch-$k" "$rep" "$k" 0 "" -- --file "$w3"
  done
  for k in 0 2 8; do
    cluster_run uniform "prefetch-$k" "$rep" "$k" 0 "" -- --count 200 --sleep 50ms --size 0.05
  done
  for k in 8 0; do
    cluster_run late-joiner "prefetch-$k" "$rep" "$k" 1 "" -- --count 10 --sleep 1s
  done
  cluster_run stragglers plain "$rep" 0 0 "" -- --count 60 --size 1 -- sh -c "$straggler"
  cluster_run stragglers speculate-3 "$rep" 0 0 "--speculate 3" -- --count 60 --size 1 -- sh -c "$straggler"
  cluster_run stragglers replicas-2 "$rep" 0 0 "" -- --count 60 --size 1 --replicas 2 -- sh -c "$straggler"
done

# --- summary ---------------------------------------------------------------------------------------
elapsed=$((SECONDS - started))
mkdir -p "$out"
python3 - "$runs" "$out/redundancy.json" "$commit" "$dirty" "$reps" "$elapsed" "$straggler" "$work" <<'EOF'
import datetime, heapq, json, math, os, random, re, statistics, sys, time
runs_path, out_path, commit, dirty, reps, elapsed, straggler, work = sys.argv[1:]

W3 = [1.0 if i % 10 == 9 else (0.02, 0.05, 0.2)[i % 3] for i in range(200)]
BOUND = {"w3": sum(W3) / 4, "uniform": 200 * 0.05 / 4}
TASKS = {"w3": 200, "uniform": 200, "late-joiner": 10, "stragglers": 60}
TYPICAL_S = 0.2  # the straggler task's usual run

# A zero-overhead model of experiment 2, to read the three noisy real runs against: how many tasks
# draw the slow 2 s varies from run to run (binomial, mean 3 of 60), and makespan follows it. Same
# rules as Ballast: fifo over 2 workers x 2 slots; replicas start together on both workers and
# free both slots when the first succeeds; speculation (factor 3, estimate = mean winning run
# after 3 successes) looks every 100 ms, only when nothing is queued and a slot is idle, and puts
# the copy on the other worker. Fixed seed, so the figures are the same on every run.
P_SLOW, FAST, SLOW = 13 / 256, 0.2, 2.0

def draw(rng):
    return SLOW if rng.random() < P_SLOW else FAST

def model_plain(rng, n=60, slots=4):
    free = [0.0] * slots
    end = 0.0
    for _ in range(n):
        f = heapq.heappop(free) + draw(rng)
        end = max(end, f)
        heapq.heappush(free, f)
    return end, n

def model_replicas(rng, n=60, pairs=2):
    # Both copies start together on the two workers and both slots free when the first succeeds.
    free = [0.0] * pairs
    end = 0.0
    for _ in range(n):
        f = heapq.heappop(free) + min(draw(rng), draw(rng))
        end = max(end, f)
        heapq.heappush(free, f)
    return end, 2 * n

def model_speculate(rng, n=60, factor=3.0, workers=2, slots=2, tick=0.1):
    run = {}  # (worker, slot) -> (task, start, end)
    queue = [(i, False) for i in range(n)]  # (task, is_copy)
    done, copied = set(), set()
    wins = []  # winner run times
    t, copies = 0.0, n
    def free_slots(w):
        return [(w, s) for s in range(slots) if (w, s) not in run]
    def place():
        nonlocal queue
        left = []
        for i, (task, is_copy) in enumerate(queue):
            if len(run) == workers * slots:
                left.extend(queue[i:])
                break
            if task in done:
                continue
            on = {w for (w, _), r in run.items() if r[0] == task}
            cands = [w for w in range(workers) if w not in on and free_slots(w)]
            if not cands:
                left.append((task, is_copy))
                continue
            w = max(cands, key=lambda w: (len(free_slots(w)), -w))
            run[free_slots(w)[0]] = (task, t, t + draw(rng))
        queue = left
    place()
    while run:
        next_end = min(r[2] for r in run.values())
        idle = workers * slots - len(run)
        spec_possible = not queue and idle > 0 and len(wins) >= 3
        next_tick = (math.floor(t / tick + 1e-9) + 1) * tick
        if spec_possible and next_tick < next_end:
            t = next_tick
            est = statistics.fmean(wins)
            strag = []
            for (w, s), (task, start, _) in run.items():
                if task not in copied and (t - start) / est > factor:
                    strag.append(((t - start) / est, task))
            for _, task in sorted(strag, reverse=True)[:idle]:
                copied.add(task)
                copies += 1
                queue.append((task, True))
            place()
            continue
        t = next_end
        for k, (task, start, end) in list(run.items()):
            if end == next_end and task not in done:
                done.add(task)
                wins.append(end - start)
                for k2, r2 in list(run.items()):
                    if r2[0] == task:
                        del run[k2]
        place()
    return t, copies

def model(kind, trials=4000, seed=1):
    rng = random.Random(seed)
    f = {"plain": model_plain, "speculate-3": model_speculate, "replicas-2": model_replicas}[kind]
    ms, cs = zip(*(f(rng) for _ in range(trials)))
    ms = sorted(ms)
    q = lambda p: round(ms[int(p * (len(ms) - 1))], 3)
    return {"trials": trials, "mean_makespan_s": round(statistics.fmean(ms), 3),
            "p10_s": q(0.1), "p50_s": q(0.5), "p90_s": q(0.9),
            "mean_copies": round(statistics.fmean(cs), 2)}


LOG = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z ")
def log_ms(line):
    m = LOG.match(line)
    if not m:
        return None
    t = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f")
    return t.replace(tzinfo=datetime.timezone.utc).timestamp() * 1e3

def pct(xs, p):  # nearest rank
    xs = sorted(xs)
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)] if xs else None

def read_lines(path):
    try:
        return open(path).read().splitlines()
    except OSError:
        return []

runs = []
for line in open(runs_path):
    r = json.loads(line)
    d = r.pop("dir")
    try:
        r["submit_args"] = [a.replace(work + "/", "") for a in
                            open(os.path.join(d, "submit.args")).read().split("\0")[:-1]]
    except OSError:
        r["submit_args"] = None
    t0, t1 = r.pop("t0"), r.pop("t1")
    r["makespan_s"] = round(t1 - t0, 4)
    exp = r["experiment"]
    if exp in BOUND:
        r["ratio"] = round(r["makespan_s"] / BOUND[exp], 4)
    try:
        res = json.load(open(os.path.join(d, "results.json")))
    except (OSError, ValueError):
        res = []
    try:
        sub = json.load(open(os.path.join(d, "submit.json")))
    except (OSError, ValueError):
        sub = {}
    ids = [t["id"] for t in res]
    r["outcomes"] = len(res)
    r["one_outcome_per_task"] = len(ids) == len(set(ids)) == TASKS[exp] == len(sub.get("ids", []))
    r["succeeded"] = sum(t["state"] == "succeeded" for t in res)
    r["all_succeeded"] = (r["rc"] == 0 and r["succeeded"] == TASKS[exp]
                          and sub.get("succeeded") == TASKS[exp] and sub.get("failed") == 0)
    per = {}
    for t in res:
        per[t.get("worker") or "-"] = per.get(t.get("worker") or "-", 0) + 1
    r["per_worker"] = dict(sorted(per.items()))
    r["copies"] = sum(t.get("copies", 0) for t in res)
    r["attempts"] = sum(t.get("attempts", 0) for t in res)
    if res and all(t.get("finished_ms") and t.get("started_ms") for t in res):
        subm = min(t["submitted_ms"] for t in res)
        r["master_span_s"] = round((max(t["finished_ms"] for t in res) - subm) / 1e3, 3)
        # Fifo order kept? For each task, how many tasks submitted after it started before it.
        # (Ties within a millisecond are not counted.) Prefetched tasks wait in their worker's
        # own queue, so they can be overtaken by later tasks that another worker took.
        by_id = sorted(res, key=lambda t: t["id"])
        overtaken = [sum(u["started_ms"] < t["started_ms"] for u in by_id[i + 1:])
                     for i, t in enumerate(by_id)]
        r["overtaken_max"] = max(overtaken)
        r["overtaken_tasks"] = sum(x > 0 for x in overtaken)
        if exp == "w3":
            # W3 in fifo ends about 1 s after its last 1 s task (task 200) starts.
            r["task200_start_s"] = round((by_id[-1]["started_ms"] - subm) / 1e3, 3)
    mlog = read_lines(os.path.join(d, "master.log"))
    wlog = read_lines(os.path.join(d, "w1.log")) + read_lines(os.path.join(d, "w2.log"))
    r["rebalancing_lines"] = sum("rebalancing:" in l for l in mlog)
    r["rebalanced_returned"] = sum(int(m.group(1)) for l in mlog
                                   for m in [re.search(r"rebalanced: .* returned (\d+) of", l)] if m)
    r["displace_lines"] = sum("displaces prefetched task" in l for l in mlog)
    r["speculative_copies"] = sum("starting a speculative copy" in l for l in mlog)
    r["worker_over_assigned_warnings"] = sum("the master assigned more than" in l for l in wlog)
    if r["w2_started"] is not None:
        r["w2_started_s"] = round(r.pop("w2_started") - t0, 3)
        joins = [log_ms(l) for l in mlog if "worker w2 joined" in l]
        if joins and joins[0]:
            r["w2_joined_s"] = round(joins[0] / 1e3 - t0, 3)
        r["w2_tasks"] = per.get("w2", 0)
        w2s = [t["started_ms"] for t in res if t.get("worker") == "w2" and t.get("started_ms")]
        if w2s:
            r["w2_first_start_s"] = round(min(w2s) / 1e3 - t0, 3)
    else:
        r.pop("w2_started")
    if exp == "stragglers" and res:
        # Per task, finished - started, where started is the *winning* copy's start (what
        # `results` reports). For a speculated task the first copy began earlier: the log line
        # "task N has run X ms ..." at time T puts its start at T - X.
        first = {}
        for l in mlog:
            m = re.search(r"task (\d+) has run (\d+) ms", l)
            if m and log_ms(l):
                first[int(m.group(1))] = log_ms(l) - int(m.group(2))
        run = [t["finished_ms"] - t["started_ms"] for t in res]
        since_first = [t["finished_ms"] - min(t["started_ms"], first.get(t["id"], math.inf))
                       for t in res]
        r["task_ms"] = {"p50": pct(run, 50), "p95": pct(run, 95), "max": max(run)}
        r["task_ms_from_first_start"] = {"p50": pct(since_first, 50), "p95": pct(since_first, 95),
                                         "max": max(since_first)}
        # A fast run takes about 0.2 s; over 0.5 s from the first start means the first copy
        # drew the slow 2 s (rescued or not).
        r["slow_tasks"] = sum(x > 500 for x in run)
        r["slow_first_draws"] = sum(x > 500 for x in since_first)
        r["speculated_copy_won"] = sum(1 for t in res if t["id"] in first
                                       and t["started_ms"] > first[t["id"]] + 50)
        r["work_cost_s"] = round(r["copies"] * TYPICAL_S, 1)
        r["run_time_sum_s"] = round(sum(run) / 1e3, 2)
        # The same draws without speculation: replay this run's tasks in fifo order on 4 slots
        # with zero overhead, each lasting its measured run, except that a speculated task lasts
        # the 2 s its first copy had drawn. On the plain runs the replay lands within a few tens
        # of ms of the measured makespan (that gap is the real overhead).
        if r["config"] != "replicas-2":
            free, end = [0.0] * 4, 0.0
            for t in sorted(res, key=lambda t: t["id"]):
                x = 2000.0 if t["id"] in first else t["finished_ms"] - t["started_ms"]
                f = heapq.heappop(free) + x
                end = max(end, f)
                heapq.heappush(free, f)
            r["plain_replay_s"] = round(end / 1e3, 3)
            r["gain_vs_plain_replay_s"] = round(r["plain_replay_s"] - r["makespan_s"], 3)
    runs.append(r)

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

summary = []
for k in dict.fromkeys((r["experiment"], r["config"]) for r in runs):
    rs = [r for r in runs if (r["experiment"], r["config"]) == k]
    row = {"experiment": k[0], "config": k[1], "prefetch": rs[0]["prefetch"],
           "master_args": rs[0]["master_args"], "submit_args": rs[0]["submit_args"],
           "median_makespan_s": round(med([r["makespan_s"] for r in rs]), 4),
           "makespans_s": [r["makespan_s"] for r in rs],
           "per_worker": [r["per_worker"] for r in rs],
           "rebalancing_lines": [r["rebalancing_lines"] for r in rs],
           "rebalanced_returned": [r["rebalanced_returned"] for r in rs],
           "displace_lines": [r["displace_lines"] for r in rs],
           "worker_over_assigned_warnings": [r["worker_over_assigned_warnings"] for r in rs],
           "loadavg_1m": [r["loadavg_1m"] for r in rs],
           "all_succeeded": all(r["all_succeeded"] for r in rs),
           "one_outcome_per_task": all(r["one_outcome_per_task"] for r in rs)}
    if k[0] in BOUND:
        row["lower_bound_s"] = BOUND[k[0]]
        row["ratio"] = round(row["median_makespan_s"] / BOUND[k[0]], 4)
        row["ratios"] = [r["ratio"] for r in rs]
        row["master_span_s"] = [r.get("master_span_s") for r in rs]
        row["overtaken_max"] = [r.get("overtaken_max") for r in rs]
        row["overtaken_tasks"] = [r.get("overtaken_tasks") for r in rs]
        if k[0] == "w3":
            row["task200_start_s"] = [r.get("task200_start_s") for r in rs]
    if k[0] == "late-joiner":
        row["w2_tasks"] = [r["w2_tasks"] for r in rs]
        row["w2_joined_s"] = [r.get("w2_joined_s") for r in rs]
        row["w2_first_start_s"] = [r.get("w2_first_start_s") for r in rs]
    if k[0] == "stragglers":
        for f in ("task_ms", "task_ms_from_first_start"):
            row[f] = {p: med([r[f][p] for r in rs]) for p in ("p50", "p95", "max")}
            row[f + "_runs"] = [r[f] for r in rs]
        for f in ("copies", "attempts", "speculative_copies", "speculated_copy_won",
                  "slow_tasks", "slow_first_draws", "work_cost_s",
                  "run_time_sum_s", "plain_replay_s", "gain_vs_plain_replay_s"):
            row[f] = [r.get(f) for r in rs]
        row["median_copies"] = med(row["copies"])
        row["median_work_cost_s"] = med(row["work_cost_s"])
        row["model"] = model(k[1])
    summary.append(row)

doc = {
    "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "commit": commit, "tracked_files_modified": int(dirty or 0),
    "host": {"cpus": os.cpu_count(), "note": "2-core VM shared with concurrent builds and tests"},
    "repetitions": int(reps), "script_runtime_s": int(elapsed),
    "setup": "fresh `master serve --no-journal --order fifo` and workers `--slots 2` on 127.0.0.1 "
             "per run; makespan = wall time of one `master submit ... --wait --json`",
    "workloads": {
        "w3": {"tasks": 200, "work_s": round(sum(W3), 3), "lower_bound_s": BOUND["w3"]},
        "uniform": {"tasks": 200, "task_s": 0.05, "lower_bound_s": BOUND["uniform"]},
        "late-joiner": {"tasks": 10, "task_s": 1.0, "w2_starts_after_s": 0.3,
                        "ideal_makespan_s": 3.0, "without_rebalancing_s": 5.0},
        "stragglers": {"tasks": 60, "command": ["sh", "-c", straggler], "size": 1,
                       "p_slow": round(13 / 256, 4), "typical_run_s": TYPICAL_S, "slow_run_s": 2.0}},
    "summary": summary, "runs": runs,
}
with open(out_path, "w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")

def runs_s(row):
    return " ".join(f"{x:.3f}" for x in row["makespans_s"])

print(f"\nmedian of {reps} runs (makespan = wall time of `submit --wait`)")
print(f"{'experiment':11} {'config':12} {'median_s':>8} {'ratio':>6}  {'runs_s':24} "
      f"{'rebal req/returned':19} other")
for row in summary:
    ratio = f"{row['ratio']:6.3f}" if "ratio" in row else "     -"
    reb = ",".join(map(str, row["rebalancing_lines"])) + " / " + \
        ",".join(map(str, row["rebalanced_returned"]))
    other = ""
    if row["experiment"] == "late-joiner":
        other = (f"w2 ran {row['w2_tasks']}, joined at {row['w2_joined_s']} s, "
                 f"first start {row['w2_first_start_s']} s")
    elif row["experiment"] == "stragglers":
        t, f = row["task_ms"], row["task_ms_from_first_start"]
        other = (f"task ms p50/p95/max {t['p50']}/{t['p95']}/{t['max']} "
                 f"(from first start {f['p50']}/{f['p95']}/{f['max']}); "
                 f"copies {row['copies']}; work {row['work_cost_s']} s; "
                 f"spec {row['speculative_copies']} (won {row['speculated_copy_won']}); "
                 f"slow first draws {row['slow_first_draws']}; "
                 f"same draws plain (replay) {row['plain_replay_s']} s; model mean "
                 f"{row['model']['mean_makespan_s']} s (p10-p90 {row['model']['p10_s']}-"
                 f"{row['model']['p90_s']})")
    else:
        other = ("w1/w2 " + " ".join("/".join(map(str, p.values())) for p in row["per_worker"])
                 + f"; overtaken max {row['overtaken_max']}"
                 + (f"; task 200 starts {row['task200_start_s']} s" if "task200_start_s" in row
                    else ""))
    warn = sum(row["worker_over_assigned_warnings"])
    if warn:
        other += f"; worker over-assignment warnings {row['worker_over_assigned_warnings']}"
    print(f"{row['experiment']:11} {row['config']:12} {row['median_makespan_s']:8.3f} {ratio}  "
          f"{runs_s(row):24} {reb:19} {other}"
          + ("" if row["all_succeeded"] and row["one_outcome_per_task"]
             else "  (NOT ALL TASKS SUCCEEDED ONCE)"))
print(f"\nwrote {out_path}; script runtime {elapsed} s")
bad = [r for r in summary if not (r["all_succeeded"] and r["one_outcome_per_task"])]
sys.exit(1 if bad else 0)
EOF
