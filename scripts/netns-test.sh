#!/usr/bin/env bash
# Multi-host test in network namespaces: a master and two workers on three "hosts" joined by a
# bridge, a batch of tasks, one worker's link cut mid-run (it must be declared dead within the
# heartbeat timeout and its tasks re-run on the other worker, all succeeding), then the link healed
# (the worker must rejoin as alive).
#
# Needs root and iproute2 (`ip netns`). Everything lives inside namespaces this script creates: the
# host's own interfaces and routes are never touched, and the test subnet exists only there.
#
#   sudo scripts/netns-test.sh           # builds the debug binaries first
#   BALLAST_BIN_DIR=target/release scripts/netns-test.sh
#
# Exit 0 on success (or "skipped: ..." when namespaces cannot be made here), 1 with a message on a
# failure; logs are kept on failure and their folder is printed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SUBNET=10.77.0 # private, and only inside the namespaces below
MASTER_IP=$SUBNET.1
PORT=7700
TOKEN=netns-test-token
HEARTBEAT=500ms
HEARTBEAT_TIMEOUT_MS=2000
TASKS=40
TAG=bt$$ # namespace names are unique per run, so two runs never collide
NS_M=$TAG-master
NS_W1=$TAG-w1
NS_W2=$TAG-w2
WORK=$(mktemp -d /tmp/ballast-netns.XXXXXX)
PIDS=()
OK=0

say() { echo "netns-test: $*"; }
fail() {
    say "FAIL: $*" >&2
    exit 1
}

cleanup() {
    local pid ns
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    for ns in "$NS_M" "$NS_W1" "$NS_W2"; do
        ip netns del "$ns" 2>/dev/null || true
    done
    if [[ $OK == 1 ]]; then
        rm -rf "$WORK"
    else
        echo "netns-test: logs kept in $WORK" >&2
    fi
}

# ---- can we? -----------------------------------------------------------------------------------
if ! command -v ip >/dev/null 2>&1; then
    echo "skipped: iproute2 (ip) is not installed (apt-get install iproute2)"
    rm -rf "$WORK"
    exit 0
fi
if ! ip netns add "$NS_M" 2>"$WORK/probe.err"; then
    echo "skipped: cannot create network namespaces here: $(head -1 "$WORK/probe.err")"
    rm -rf "$WORK"
    exit 0
fi
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v python3 >/dev/null 2>&1 || fail "python3 is needed to read status --json"

# ---- binaries ----------------------------------------------------------------------------------
if [[ -n ${BALLAST_BIN_DIR:-} ]]; then
    BIN=$(cd "$BALLAST_BIN_DIR" && pwd)
else
    say "building master and worker"
    (cd "$ROOT" && cargo build --quiet -p master --bin master --bin ballast-master -p worker --bin worker) ||
        fail "cargo build failed"
    BIN=$ROOT/target/debug
fi
MASTER=$BIN/master
WORKER=$BIN/worker
[[ -x $MASTER && -x $WORKER ]] || fail "no master/worker binaries in $BIN"

# ---- the network: a bridge in the master's namespace, one veth per worker ----------------------
ip netns add "$NS_W1"
ip netns add "$NS_W2"
for ns in "$NS_M" "$NS_W1" "$NS_W2"; do
    ip -n "$ns" link set lo up
done
ip -n "$NS_M" link add br0 type bridge
ip -n "$NS_M" addr add "$MASTER_IP/24" dev br0
ip -n "$NS_M" link set br0 up
i=10
for ns in "$NS_W1" "$NS_W2"; do
    i=$((i + 1))
    port=p${ns##*-}
    # Created inside the namespaces: the host never sees these interfaces.
    ip -n "$NS_M" link add "$port" type veth peer name eth0 netns "$ns"
    ip -n "$NS_M" link set "$port" master br0
    ip -n "$NS_M" link set "$port" up
    ip -n "$ns" addr add "$SUBNET.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
done
if command -v ping >/dev/null 2>&1; then
    ip netns exec "$NS_W1" ping -c1 -W2 "$MASTER_IP" >/dev/null 2>&1 ||
        fail "w1 cannot reach the master's namespace at $MASTER_IP"
fi

# ---- processes ---------------------------------------------------------------------------------
ADDR=$MASTER_IP:$PORT
ip netns exec "$NS_M" env RUST_LOG=info "$MASTER" --listen "$ADDR" --token "$TOKEN" \
    --http off --no-journal --heartbeat "$HEARTBEAT" --heartbeat-timeout "${HEARTBEAT_TIMEOUT_MS}ms" \
    --port-file "$WORK/addr" >"$WORK/master.log" 2>&1 &
PIDS+=($!)

cli() { # cli SUBCOMMAND ARGS... : a client in the master's namespace, with the token
    local sub=$1
    shift
    ip netns exec "$NS_M" env BALLAST_TOKEN="$TOKEN" timeout 60 "$MASTER" "$sub" --master "$ADDR" "$@"
}

# Polls `cond` (a shell function) every 100 ms until true, or fails with `what` after `secs`.
eventually() {
    local secs=$1 what=$2 cond=$3
    local deadline=$((SECONDS + secs))
    until "$cond"; do
        ((SECONDS < deadline)) || fail "timed out after ${secs}s waiting for $what"
        sleep 0.1
    done
}

master_up() { [[ -s $WORK/addr ]]; }
eventually 20 "the master to listen on $ADDR" master_up

for w in w1 w2; do
    ns=$TAG-$w
    ip netns exec "$ns" env RUST_LOG=info "$WORKER" --master "$ADDR" --token "$TOKEN" \
        --name "$w" --slots 4 >"$WORK/$w.log" 2>&1 &
    PIDS+=($!)
done

status_json() { cli status --json 2>/dev/null; }
# worker_field NAME FIELD: one field of one worker in `status --json` ("" if absent).
worker_field() {
    status_json | python3 -c '
import json, sys
s = json.load(sys.stdin)
w = [w for w in s["workers"] if w["name"] == sys.argv[1]]
print(w[0][sys.argv[2]] if w else "")' "$1" "$2"
}
both_alive() {
    [[ $(worker_field w1 state) == alive && $(worker_field w2 state) == alive ]]
}
eventually 30 "w1 and w2 to join" both_alive
say "master on $ADDR (token required), w1 and w2 joined"

# ---- the batch, and a cut mid-run --------------------------------------------------------------
cli submit --count "$TASKS" --retries 5 --sleep 500ms >/dev/null || fail "submit failed"
w1_busy_after_some_done() {
    local s
    s=$(status_json) || return 1
    python3 -c '
import json, sys
s = json.load(sys.stdin)
w1 = [w for w in s["workers"] if w["name"] == "w1"][0]
sys.exit(0 if s["succeeded"] >= 4 and w1["running"] > 0 else 1)' <<<"$s"
}
eventually 30 "some tasks done and w1 busy" w1_busy_after_some_done
ip -n "$NS_W1" link set eth0 down
cut_at=$(date +%s%N)
say "cut w1's link (w1 was running $(worker_field w1 running) tasks)"

w1_dead() { [[ $(worker_field w1 state) == dead ]]; }
# The heartbeat timeout, plus the master's 100 ms sweep and this loop's own polling.
eventually $((HEARTBEAT_TIMEOUT_MS / 1000 + 3)) "w1 to be declared dead" w1_dead
dead_ms=$((($(date +%s%N) - cut_at) / 1000000))
say "w1 declared dead ${dead_ms} ms after the cut (heartbeat timeout ${HEARTBEAT_TIMEOUT_MS} ms)"

cli wait >/dev/null || fail "wait: not every task succeeded"
cli results --json >"$WORK/results.json" || fail "results failed"
python3 - "$WORK/results.json" "$TASKS" <<'EOF' || fail "results check failed (see $WORK/results.json)"
import json, sys
results = json.load(open(sys.argv[1]))
want = int(sys.argv[2])
ids = [r["id"] for r in results]
assert len(ids) == want and len(set(ids)) == want, f"{len(ids)} results, {len(set(ids))} distinct"
bad = [r for r in results if r["state"] != "succeeded"]
assert not bad, f"not succeeded: {bad[:3]}"
rerun = [r for r in results if r["attempts"] >= 2]
assert rerun, "no task was run again after w1's link was cut"
elsewhere = [r for r in rerun if r["worker"] == "w2"]
assert elsewhere, f"re-run tasks did not run on w2: {rerun[:3]}"
print(f"netns-test: all {want} succeeded; {len(rerun)} re-run, {len(elsewhere)} of them on w2")
EOF

# ---- heal ---------------------------------------------------------------------------------------
ip -n "$NS_W1" link set eth0 up
healed_at=$SECONDS
w1_alive() { [[ $(worker_field w1 state) == alive ]]; }
eventually 60 "w1 to rejoin after the link came back" w1_alive
say "w1 rejoined $((SECONDS - healed_at)) s after the link came back"
grep -q "w1 joined" "$WORK/master.log" || fail "the master log does not show w1 joining"

OK=1
say "PASS"
