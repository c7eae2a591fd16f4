#!/usr/bin/env python3
"""W7's timeline from `perf trace -a` output (scripts/w7-timeline.sh): one `submit --wait -- true`
per run, the client named `mcli`. Usage: w7_timeline.py TRACE MASTER_PID WORKER_PID...
Prints each step's median and quartiles across the runs, in ms. Each step runs from the syscall
that ends the one before (a receive counts when it returns, anything else when it is entered)."""
import re, sys, statistics

trace, master = sys.argv[1], int(sys.argv[2])
worker_pids = set(int(p) for p in sys.argv[3:])
EXEC = 'sched:sched_process_exec'
LINE = re.compile(r'^\s*([\d.]+|\?) \(\s*([\d.]*)\s*(?:ms)?\): (.*?)/(\d+) +(.*)$')
ev = []  # (start, end, comm, tid, name, args, ret)
pending = {}
for raw in open(trace):
    m = LINE.match(raw)
    if not m:
        continue
    t, dur, comm, tid, rest = m.groups()
    tid = int(tid)
    if rest.startswith('... [continued]: '):
        name = rest[len('... [continued]: '):].split('(')[0]
        start = pending.pop((tid, name), None)
        if start is None:
            start = float(t) if t != '?' else None
        r = rest.rsplit('= ', 1)
        ret = r[1].strip() if len(r) == 2 else '?'
        end = start + float(dur) if (start is not None and dur) else None
        ev.append([start, end, comm, tid, name, pending.pop((tid, name, 'args'), ''), ret])
        continue
    name = rest.split('(')[0]
    args = rest[len(name):]
    if rest.rstrip().endswith('...'):
        pending[(tid, name)] = float(t)
        pending[(tid, name, 'args')] = args
        continue
    r = rest.rsplit('= ', 1)
    ret = r[1].strip() if len(r) == 2 else '?'
    start = float(t)
    end = start + float(dur) if dur else start
    ev.append([start, end, comm, tid, name, args, ret])
ev = [e for e in ev if e[0] is not None]
ev.sort(key=lambda e: e[0])

def tgid(tid):
    try:
        for line in open(f'/proc/{tid}/status'):
            if line.startswith('Tgid:'):
                return int(line.split()[1])
    except OSError:
        return None
worker_tids = set()
for e in ev:
    if e[3] not in worker_tids and tgid(e[3]) in worker_pids:
        worker_tids.add(e[3])

clients = sorted({e[3] for e in ev if e[2] == 'mcli'})
runs = []
def when(e):
    # A receive (or a reap) happens when it returns; anything else when it is entered.
    return e[1] if e[4] in ('recvfrom', 'wait4') and e[1] is not None else e[0]
def first(pred, after, limit=None):
    best = None
    for e in ev:
        t = when(e)
        if t >= after and (limit is None or t <= limit) and pred(e):
            if best is None or t < when(best):
                best = e
    return best
def fd_of(e):
    return e[5].split('fd: ')[1].split(',')[0]
def got(e):
    # A receive that returned bytes (not EAGAIN, not the peer's 0).
    return e[6].split(' ')[0].isdigit() and e[6].split(' ')[0] != '0'
for c in clients:
    mine = [e for e in ev if e[3] == c]
    execs = [e for e in mine if e[4] == EXEC]
    exit_ = [e for e in mine if e[4] == 'exit_group']
    if not execs or not exit_:
        continue
    t0 = execs[0][0]; tx = exit_[0][0]
    S = {}
    try:
        # The shell's fork of the client: the clone that returned its pid.
        fork = [e for e in ev if e[4] == 'clone' and e[6].split(' ')[0] == str(c) and e[3] != c]
        S['fork'] = fork[0][0] if fork else None
        S['exec'] = t0
        S['connect'] = first(lambda e: e[3] == c and e[4] == 'connect', t0)[0]
        # Hello, Submit and WaitSubmitted in one write (protocol 11).
        hello = first(lambda e: e[3] == c and e[4] == 'sendto', t0)
        S['hello_sent'] = hello[0]
        rx = first(lambda e: e[3] == master and e[4] == 'recvfrom' and got(e), hello[0], tx)
        S['master_read_hello_submit'] = rx[1]
        cfd = fd_of(rx)
        S['welcome_sent'] = first(lambda e: e[3] == master and e[4] == 'sendto' and fd_of(e) == cfd, rx[0], tx)[0]
        assign = first(lambda e: e[3] == master and e[4] == 'sendto' and fd_of(e) != cfd, rx[0], tx)
        S['assign_sent'] = assign[0]
        wfd = fd_of(assign)
        wrx = first(lambda e: e[3] in worker_tids and e[4] == 'recvfrom' and got(e), assign[0], tx)
        S['worker_read_assign'] = wrx[1]
        spawn = first(lambda e: e[3] in worker_tids and e[4] in ('clone', 'clone3'), wrx[1], tx)
        S['spawn'] = spawn[0]
        child = int(spawn[6].split()[0])
        tex = [e for e in ev if e[3] == child and e[4] == EXEC]
        S['true_execve'] = tex[0][0]
        S['true_exit'] = first(lambda e: e[3] == child and e[4] == 'exit_group', tex[0][0])[0]
        reaped = first(lambda e: e[3] in worker_tids and e[4] == 'wait4' and e[6].startswith(str(child)), S['true_exit'])
        S['reaped'] = reaped[1] if reaped else None  # informational: the run counts without it
        # The worker's 1-byte writes wake its own threads; its next frame is the Finished.
        fin = first(lambda e: e[3] in worker_tids and e[4] == 'sendto' and 'len: 1,' not in e[5], S['true_exit'], tx)
        S['finished_sent'] = fin[0]
        frx = first(lambda e: e[3] == master and e[4] == 'recvfrom' and fd_of(e) == wfd and got(e), fin[0], tx)
        S['master_read_finished'] = frx[1]
        # Submitted and WaitDone leave together, after the commit that holds them.
        reply = first(lambda e: e[3] == master and e[4] == 'sendto' and fd_of(e) == cfd, frx[1], tx)
        S['reply_sent'] = reply[0]
        sync = first(lambda e: e[3] == master and e[4] == 'fsync', frx[1], reply[0])
        if sync:
            S['commit_start'] = sync[0]
            S['commit_end'] = first(lambda e: e[3] == master and e[4] == 'fdatasync', sync[0], reply[0])[1]
        S['client_read_reply'] = first(lambda e: e[3] == c and e[4] == 'recvfrom' and got(e), reply[0], tx)[1]
        S['client_exit_group'] = tx
        reap = first(lambda e: e[4] == 'wait4' and e[6].startswith(str(c)), tx)
        S['shell_reaped_client'] = reap[1] if reap else None
    except (TypeError, IndexError, ValueError) as err:
        print(f'client {c}: incomplete ({err}); have {sorted(S)}', file=sys.stderr)
        continue
    runs.append(S)

steps = [
    ('shell forks the client -> its exec is done', 'fork', 'exec'),
    ('client exec done -> connect()', 'exec', 'connect'),
    ('connect() -> Hello+Submit+WaitSubmitted written', 'connect', 'hello_sent'),
    ('-> master has read them', 'hello_sent', 'master_read_hello_submit'),
    ('master: read -> Welcome written', 'master_read_hello_submit', 'welcome_sent'),
    ('master: Welcome -> Assign written', 'welcome_sent', 'assign_sent'),
    ('worker: Assign read (reader thread)', 'assign_sent', 'worker_read_assign'),
    ('worker: Assign read -> spawn (main loop)', 'worker_read_assign', 'spawn'),
    ('worker: spawn -> exec of true done (PATH search)', 'spawn', 'true_execve'),
    ('true: exec done -> exit_group', 'true_execve', 'true_exit'),
    # The IO thread tells the loop of the exit when the pidfd says so and reaps beside it, so
    # the Finished may leave before the reap returns: the two are measured from the exit.
    ('worker: exit -> Finished written (IO thread, main loop)', 'true_exit', 'finished_sent'),
    ('worker: exit -> reaped (IO thread; overlaps the line above)', 'true_exit', 'reaped'),
    ('master: Finished read', 'finished_sent', 'master_read_finished'),
    ('master: Finished read -> commit starts', 'master_read_finished', 'commit_start'),
    ('master: commit (fsync WAL + fdatasync marks)', 'commit_start', 'commit_end'),
    ('master: commit -> Submitted+WaitDone written', 'commit_end', 'reply_sent'),
    ('master: Finished read -> reply written (all of it)', 'master_read_finished', 'reply_sent'),
    ('client: reply read', 'reply_sent', 'client_read_reply'),
    ('client: reply -> exit_group', 'client_read_reply', 'client_exit_group'),
    ('client exit_group -> reaped by the shell', 'client_exit_group', 'shell_reaped_client'),
    ('TOTAL fork -> reaped (what bench.sh times)', 'fork', 'shell_reaped_client'),
    ('worker span: Assign written -> Finished read', 'assign_sent', 'master_read_finished'),
]
print(f'{len(runs)} runs')
print(f'{"step":58} {"median":>7} {"p25":>7} {"p75":>7}')
for label, a, b in steps:
    xs = [r[b] - r[a] for r in runs if r.get(a) is not None and r.get(b) is not None]
    if not xs:
        print(f'{label:58} {"-":>7}')
        continue
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    print(f'{label:58} {statistics.median(xs):7.3f} {q[0]:7.3f} {q[2]:7.3f}')
