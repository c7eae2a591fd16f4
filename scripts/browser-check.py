#!/usr/bin/env python3
"""The dashboard in a real browser: starts a master and two workers on free loopback ports, runs a
batch of tasks through the HTTP API, loads http://ADDR/ in headless Chromium (`--dump-dom`, the
DOM after the page's script ran) and checks that the page shows both worker names, the succeeded
count, and one timeline bar per finished task of the batch. A task whose output is markup is
opened in the detail view (`/#task=ID`) to check that output is shown as text, never as HTML.

    scripts/browser-check.py                      # binaries from target/release (built if missing)
    BALLAST_BIN_DIR=target/debug scripts/browser-check.py
    BALLAST_SCREENSHOT=/tmp/dash.png scripts/browser-check.py   # also a 1280x800 screenshot

Exits 0 when every check passed, 1 with a message naming what failed. Without Chromium it prints
"skipped: chromium not installed" and exits 0, unless BALLAST_REQUIRE_CHROMIUM=1 (CI), when that
is a failure. Python standard library only. Every process it starts is stopped by its pid.
"""

import html.parser
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 12
DUMP_ATTEMPTS = 5
WORKERS = ("dash-w1", "dash-w2")
FINAL = {"succeeded", "failed", "timed_out", "cancelled", "worker_lost"}
# Markup a task prints: the detail view must show it as text.
INJECTED = '<img id="injected" src="x"><b id="injected-b">bold</b>'


class CheckFailed(Exception):
    pass


def chromium_binary():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def eventually(what, probe, limit_s, procs):
    """Polls `probe` every 50 ms until it returns something truthy; fails after `limit_s`."""
    end = time.monotonic() + limit_s
    while True:
        for name, p in procs:
            if p.poll() is not None:
                raise CheckFailed(f"{name} exited with {p.returncode} while waiting for {what}")
        try:
            value = probe()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > end:
            raise CheckFailed(f"timed out after {limit_s} s waiting for {what}")
        time.sleep(0.05)


def http(addr, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{addr}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


class Dom(html.parser.HTMLParser):
    """What the checks read from the dumped DOM: elements by id and class, with their text."""

    def __init__(self):
        super().__init__()
        self.stack = []  # (tag, attrs, text parts)
        self.elements = []  # (tag, attrs, text, ancestor ids)

    def handle_starttag(self, tag, attrs):
        self.stack.append((tag, dict(attrs), []))
        if tag in ("img", "input", "br", "meta", "link"):  # void elements have no end tag
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        # Pop to the matching start tag (the dump is well formed; be lenient anyway).
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                while len(self.stack) > i:
                    t, attrs, parts = self.stack.pop()
                    text = "".join(parts)
                    ids = [a.get("id") for _, a, _ in self.stack if a.get("id")]
                    self.elements.append((t, attrs, text, ids))
                    if self.stack:
                        self.stack[-1][2].append(text)
                return

    def handle_data(self, data):
        if self.stack:
            self.stack[-1][2].append(data)

    def by_id(self, id_):
        return [e for e in self.elements if e[1].get("id") == id_]

    def by_class(self, cls, inside=None):
        return [
            e
            for e in self.elements
            if cls in (e[1].get("class") or "").split() and (inside is None or inside in e[3])
        ]


def dump_dom(chromium, url, profile, extra=(), keep=None):
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
        "--virtual-time-budget=5000", "--window-size=1280,800", *(extra or ["--dump-dom"]), url,
    ]
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=90, check=False)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"chromium did not finish within 90 s: {' '.join(cmd)}")
    if out.returncode != 0:
        raise CheckFailed(f"chromium exited {out.returncode}: {out.stderr.decode(errors='replace')[-2000:]}")
    dom = out.stdout.decode(errors="replace")
    if keep:
        with open(keep, "w") as f:
            f.write(dom)
    return dom


def rendered_dom(chromium, url, work, keep):
    """The DOM once the page has rendered fetched data (`body[data-rendered]`). The virtual time
    budget does not wait for slow answers, so on a loaded machine a dump may come too early:
    it is taken again, a bounded number of times."""
    for attempt in range(1, DUMP_ATTEMPTS + 1):
        dom = Dom()
        dom.feed(dump_dom(chromium, url, os.path.join(work, "profile"), keep=os.path.join(work, keep)))
        if any(e[0] == "body" and e[1].get("data-rendered") for e in dom.elements):
            return dom
        print(f"browser-check: {url}: the page had not rendered its data yet (dump {attempt})", file=sys.stderr)
    raise CheckFailed(f"{url} never rendered fetched data in {DUMP_ATTEMPTS} dumps (see {keep} in the logs)")


def check(chromium, bin_dir, work):
    procs = []
    try:
        log = lambda name: open(os.path.join(work, name + ".log"), "wb")
        master = subprocess.Popen(
            [os.path.join(bin_dir, "master"), "--listen", "127.0.0.1:0",
             "--port-file", os.path.join(work, "addr"), "--http", "127.0.0.1:0",
             "--http-port-file", os.path.join(work, "http-addr"),
             "--data-dir", os.path.join(work, "data")],
            stdout=log("master"), stderr=subprocess.STDOUT)
        procs.append(("the master", master))
        read = lambda f: open(os.path.join(work, f)).read().strip() if os.path.exists(os.path.join(work, f)) else None
        addr = eventually("the master's port file", lambda: read("addr"), 20, procs)
        http_addr = eventually("the master's HTTP port file", lambda: read("http-addr"), 20, procs)
        for name in WORKERS:
            w = subprocess.Popen(
                [os.path.join(bin_dir, "worker"), "--master", addr, "--name", name, "--slots", "2"],
                stdout=log(name), stderr=subprocess.STDOUT)
            procs.append((name, w))

        def alive():
            st = http(http_addr, "GET", "/api/v1/status")
            return sum(w["state"] == "alive" for w in st["workers"]) == len(WORKERS)

        eventually("both workers to join", alive, 30, procs)
        task = {"cmd": ["sh", "-c", 'sleep 0.2; echo "task $$ done"']}
        ids = http(http_addr, "POST", "/api/v1/tasks", {"tasks": [task], "count": BATCH})["ids"]
        if len(ids) != BATCH:
            raise CheckFailed(f"submitted {BATCH} tasks, got ids {ids}")
        marked = http(http_addr, "POST", "/api/v1/tasks", {"cmd": ["printf", "%s", INJECTED]})["ids"][0]
        eventually(f"the {BATCH + 1} tasks to succeed",
                   lambda: http(http_addr, "GET", "/api/v1/status")["succeeded"] == BATCH + 1, 60, procs)
        succeeded = http(http_addr, "GET", "/api/v1/status")["succeeded"]

        url = f"http://{http_addr}/"
        dom = rendered_dom(chromium, url, work, "page.html")
        problems = []
        names = [e[2].strip() for e in dom.by_class("worker-name", inside="workers")]
        for name in WORKERS:
            if name not in names:
                problems.append(f"worker {name} not in #workers (found {names})")
        shown = [e[2].strip() for e in dom.by_id("count-succeeded")]
        if shown != [str(succeeded)]:
            problems.append(f"#count-succeeded shows {shown}, status says {succeeded}")
        bars = dom.by_class("bar", inside="timeline")
        batch = set(ids)
        finished = [b for b in bars if b[1].get("data-state") in FINAL and int(b[1].get("data-id", 0)) in batch]
        per_task = {int(b[1]["data-id"]) for b in finished}
        if len(finished) != BATCH or per_task != batch:
            problems.append(f"#timeline has {len(finished)} finished bars for the batch's {BATCH} "
                            f"tasks (ids {sorted(per_task)}, expected {sorted(batch)})")

        detail = rendered_dom(chromium, f"{url}#task={marked}", work, "detail.html")
        stdout = [e[2] for e in detail.by_id("detail-stdout")]
        if stdout != [INJECTED]:
            problems.append(f"#detail-stdout of task {marked} shows {stdout!r}, expected the text {INJECTED!r}")
        if detail.by_id("injected") or detail.by_id("injected-b"):
            problems.append(f"task {marked}'s output became HTML elements in the page")

        shot = os.environ.get("BALLAST_SCREENSHOT")
        if shot:
            dump_dom(chromium, url, os.path.join(work, "profile"), [f"--screenshot={shot}"])
            print(f"screenshot: {shot}")
        if problems:
            raise CheckFailed("the dashboard is wrong:\n  " + "\n  ".join(problems))
        print(f"ok: {url} shows workers {', '.join(WORKERS)}, {succeeded} succeeded, "
              f"{len(finished)} timeline bars for the batch of {BATCH}; task output is shown as text")
    finally:
        for _, p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for _, p in reversed(procs):
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main():
    chromium = chromium_binary()
    if chromium is None:
        if os.environ.get("BALLAST_REQUIRE_CHROMIUM") == "1":
            print("browser-check: chromium is not installed, and BALLAST_REQUIRE_CHROMIUM=1", file=sys.stderr)
            return 1
        print("skipped: chromium not installed")
        return 0
    bin_dir = os.environ.get("BALLAST_BIN_DIR", os.path.join(ROOT, "target", "release"))
    if not all(os.path.exists(os.path.join(bin_dir, b)) for b in ("master", "ballast-master", "worker")):
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "master", "-p", "worker"],
                       cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="ballast-browser-")
    try:
        check(chromium, bin_dir, work)
    except CheckFailed as e:
        print(f"browser-check: {e}\n(logs in {work})", file=sys.stderr)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
