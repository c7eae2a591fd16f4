#!/usr/bin/env python3
"""Issue 14, item 3: what 400 pipelined `Results` requests from a client that never reads cost
the master. Starts MASTER (a `master` binary) on a free port with --no-journal, queues TASKS tasks
(no worker, so they stay queued and every `Results` reply carries all of them), then opens one raw
client connection, sends REQUESTS `Results { ids: [] }` frames in one write and never reads.
Samples the master's VmRSS for SECONDS and times `master status` from a second client meanwhile.

    scripts/reply-pressure.py target/release/master [TASKS] [REQUESTS] [SECONDS]

Speaks the wire format by hand (bincode 2, standard config: varints, enum variant index first), so
it works against any protocol version: it answers the version the master's `Greeting` says.
"""

import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def read_frame(sock: socket.socket) -> bytes:
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        if not chunk:
            raise EOFError("closed")
        head += chunk
    (n,) = struct.unpack(">I", head)
    body = b""
    while len(body) < n:
        chunk = sock.recv(n - len(body))
        if not chunk:
            raise EOFError("closed")
        body += chunk
    return body


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    master = sys.argv[1]
    tasks = int(sys.argv[2]) if len(sys.argv) > 2 else 40_000
    requests = int(sys.argv[3]) if len(sys.argv) > 3 else 400
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 10.0
    tmp = tempfile.mkdtemp(prefix="ballast-pressure-")
    port_file = os.path.join(tmp, "addr")
    log = open(os.path.join(tmp, "master.log"), "w")
    proc = subprocess.Popen(
        [master, "--listen", "127.0.0.1:0", "--http", "off", "--port-file", port_file,
         "--no-journal"],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        deadline = time.time() + 10
        while not os.path.exists(port_file):
            if time.time() > deadline:
                raise SystemExit("the master wrote no port file")
            time.sleep(0.05)
        addr = open(port_file).read().strip()
        host, port = addr.rsplit(":", 1)
        subprocess.run(
            [master, "submit", "--master", addr, "--count", str(tasks), "--sleep", "1s"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        base = rss_kib(proc.pid)

        sock = socket.create_connection((host, int(port)))
        greeting = read_frame(sock)
        assert greeting[0] == 0, "Greeting first"
        version = greeting[1]  # a varint below 251 is one byte
        # Hello { version, role: Client (variant 1), auth: [] }, and from version 5 on the
        # client's own nonce (32 bytes), which the master's proof covers.
        hello = bytes([0, version, 1, 0])
        if version >= 5:
            hello += bytes([32]) + os.urandom(32)
        sock.sendall(frame(hello))
        welcome = read_frame(sock)
        assert welcome[0] == 1, f"Welcome, got variant {welcome[0]}"
        # Results { ids: [] } is ToMaster variant 6.
        # A sampler thread every 5 ms: the old master's peak lasted under a second.
        peak = [base]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_kib(proc.pid))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        sock.sendall(frame(bytes([6, 0])) * requests)
        sent = time.time()

        status_ms = []
        while time.time() - sent < seconds:
            t0 = time.time()
            out = subprocess.run(
                [master, "status", "--master", addr, "--json"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=120,
            )
            status_ms.append((time.time() - t0) * 1000)
            if out.returncode != 0:
                print("status failed:", out.stderr.decode().strip())
            time.sleep(0.2)
        stop.set()
        sampler.join()
        peak = peak[0]
        closed = ""
        try:
            sock.setblocking(False)
            # Bytes waiting (a reply) or nothing yet: still open; end of stream or reset: closed.
            if sock.recv(1) == b"":
                closed = " (the master had closed the connection)"
        except BlockingIOError:
            pass
        except OSError:
            closed = " (the master had closed the connection)"
        print(
            f"{master}: {tasks} queued tasks, {requests} pipelined Results, never read: "
            f"RSS before {base / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB "
            f"(+{(peak - base) / 1024:.0f} MiB); `master status` meanwhile: "
            f"{len(status_ms)} runs, slowest {max(status_ms):.0f} ms{closed}"
        )
        sock.close()
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
