"""One measured run of a Python-driven peer for scripts/peers.sh.

    python peers.py SYSTEM WORKLOAD TASKS SCRATCH_DIR

SYSTEM is dask, ray or hyperqueue; WORKLOAD is w3 or w1 (see scripts/peers.sh); TASKS is W1's
count (W3 has 200, whatever it says). The cluster is
started fresh, warmed up (every slot has run a task, so worker start-up is not in the figure, as
Ballast's workers are connected before its clock starts), then exactly one batch is timed. Writes
one JSON object to SCRATCH_DIR/result.json (stdout is the peers' own chatter: HyperQueue prints its
server's details there). Only the peers' public Python APIs are used.
"""

import json
import os
import subprocess
import sys
import time

W3_SECONDS = [1.0 if i % 10 == 9 else (0.02, 0.05, 0.2)[i % 3] for i in range(200)]
# Warm-up: four sleeps at once per round, until a round takes no longer than the sleep plus this
# (Ray starts its worker processes lazily, over the first few rounds). Bounded by WARM_ROUNDS.
WARM_SLEEP_S = 0.3
WARM_SLACK_S = 0.1
WARM_ROUNDS = 10


def sleep_task(seconds):
    time.sleep(seconds)
    return seconds


def true_task(_index):
    # What a user of a Python task system does to run a command.
    return subprocess.run(["true"], check=True).returncode


def stamp_command(seconds, stamp):
    """The W3 task of every process-running system in peers.sh: sleep, then touch a stamp file
    whose mtime is the task's end (HyperQueue's wait client polls once a second, so its return
    is no end time)."""
    return ["sh", "-c", 'sleep "$0" && : >"$1"', f"{seconds:g}", stamp]


def last_stamp_ns(paths):
    ends = [os.stat(p).st_mtime_ns for p in paths if os.path.exists(p)]
    return (max(ends) if ends else None), len(ends)


def warm_up(run_round, slots):
    """run_round(n, seconds) runs n sleeps at once and returns when all are done."""
    for rounds in range(1, WARM_ROUNDS + 1):
        t0 = time.perf_counter()
        run_round(slots, WARM_SLEEP_S)
        if time.perf_counter() - t0 <= WARM_SLEEP_S + WARM_SLACK_S:
            break
    return rounds


def run_dask(workload, tasks, scratch):
    import distributed

    workers, threads = (2, 2) if workload == "w3" else (2, 1)
    with distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=threads,
        processes=True,
        dashboard_address=None,
        local_directory=scratch,
    ) as cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(workers, timeout=60)
        rounds = warm_up(
            lambda n, s: client.gather(client.map(sleep_task, [s] * n, pure=False)),
            workers * threads,
        )
        t0 = time.time_ns()
        if workload == "w3":
            client.gather(client.map(sleep_task, W3_SECONDS, pure=False))
        else:
            client.gather(client.map(true_task, range(tasks), pure=False))
        t1 = time.time_ns()
    return {"version": distributed.__version__, "t0_ns": t0, "end_ns": t1, "client_end_ns": t1,
            "warm_rounds": rounds, "shape": f"{workers} workers x {threads} threads (processes)"}


def run_ray(workload, tasks, scratch):
    import ray

    slots = 4 if workload == "w3" else 2
    ray.init(num_cpus=slots, include_dashboard=False, log_to_driver=False,
             _temp_dir=os.path.join(scratch, "ray"))
    try:
        sleep_remote = ray.remote(sleep_task)
        true_remote = ray.remote(true_task)
        rounds = warm_up(lambda n, s: ray.get([sleep_remote.remote(s) for _ in range(n)]), slots)
        t0 = time.time_ns()
        if workload == "w3":
            ray.get([sleep_remote.remote(s) for s in W3_SECONDS])
        else:
            ray.get([true_remote.remote(i) for i in range(tasks)])
        t1 = time.time_ns()
    finally:
        ray.shutdown()
    return {"version": ray.__version__, "t0_ns": t0, "end_ns": t1, "client_end_ns": t1,
            "warm_rounds": rounds, "shape": f"one node, num_cpus={slots}"}


def run_hyperqueue(workload, tasks, scratch):
    import hyperqueue
    from hyperqueue.cluster import WorkerConfig

    workers, cores = (2, 2) if workload == "w3" else (2, 1)
    server_dir = os.path.join(scratch, "hq-server")
    stamps = os.path.join(scratch, "stamps")
    os.makedirs(stamps)
    with hyperqueue.LocalCluster(server_dir=server_dir) as cluster:
        for _ in range(workers):
            cluster.start_worker(WorkerConfig(cores=cores))
        client = cluster.client()

        # The wait client polls once a second, so a warm round never looks fast: one round is
        # enough to see every worker connected and running.
        warm = hyperqueue.Job()
        for _ in range(workers * cores):
            warm.program(["sleep", f"{WARM_SLEEP_S:g}"], stdout=None, stderr=None)
        client.wait_for_jobs([client.submit(warm)])
        rounds = 1
        if workload == "w3":
            paths = [os.path.join(stamps, str(i)) for i in range(len(W3_SECONDS))]
            job = hyperqueue.Job()
            for seconds, path in zip(W3_SECONDS, paths):
                job.program(stamp_command(seconds, path), stdout=None, stderr=None)
            t0 = time.time_ns()
            client.wait_for_jobs([client.submit(job)])
            t1 = time.time_ns()
            end, done = last_stamp_ns(paths)
            expected = len(paths)
        else:
            # The end of the batch is the end of one last task that depends on all of them.
            path = os.path.join(stamps, "all")
            job = hyperqueue.Job()
            trues = [job.program(["true"], stdout=None, stderr=None) for _ in range(tasks)]
            job.program(["touch", path], stdout=None, stderr=None, deps=trues)
            t0 = time.time_ns()
            client.wait_for_jobs([client.submit(job)])
            t1 = time.time_ns()
            end, done = last_stamp_ns([path])
            expected = 1
    if done != expected:
        raise RuntimeError(f"{done} of {expected} stamp files written")
    return {"version": hyperqueue.get_version(), "t0_ns": t0, "end_ns": end, "client_end_ns": t1,
            "warm_rounds": rounds,
            "shape": f"LocalCluster (server and workers in this process), {workers} workers x "
                     f"{cores} cores"}


RUNNERS = {"dask": run_dask, "ray": run_ray, "hyperqueue": run_hyperqueue}


def main():
    if (len(sys.argv) != 5 or sys.argv[1] not in RUNNERS or sys.argv[2] not in ("w3", "w1")
            or not sys.argv[3].isdigit()):
        sys.exit("usage: peers.py dask|ray|hyperqueue w3|w1 TASKS SCRATCH_DIR")
    system, workload, tasks, scratch = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    result = RUNNERS[system](workload, tasks, scratch)
    result["seconds"] = (result["end_ns"] - result["t0_ns"]) / 1e9
    result["client_seconds"] = (result["client_end_ns"] - result["t0_ns"]) / 1e9
    with open(os.path.join(scratch, "result.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
