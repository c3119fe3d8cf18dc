#!/usr/bin/env python3
"""SSE fan-out of `troupe serve`: events per second delivered to N streaming clients of one run.

    benchmarks/service/sse_fanout.py TROUPE_BINARY [--clients 100] [--items 2000] [--mode memory]

Starts `troupe serve` on a free loopback port (memory store unless --mode says otherwise),
registers a workflow whose node `wait` sleeps 1 s and whose node `each` is a for_each of
--items `echo` items after it (2 events per item), starts one run (async), and opens --clients
raw connections to GET /v1/runs/{id}/events while `wait` sleeps. Each client reads until
run_finished. Reports, over all clients, the events received and the time from the first
node_started of `each` to the last run_finished: events/s delivered, and per client. Stops the
server at the end. Figures: docs/benchmarks.md, issue 15.
"""
import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request


def post(url, key, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": "Bearer " + key,
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return r.status, json.loads(r.read())


async def client(port, key, run_id, marks):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"GET /v1/runs/{run_id}/events HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {key}\r\n\r\n").encode())
    await writer.drain()
    events = 0
    first_each = None
    buf = b""
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            frame, buf = buf.split(b"\n\n", 1)
            if b"\ndata: " not in frame and not frame.startswith(b"data: "):
                continue
            events += 1
            if first_each is None and b'"node_id":"each"' in frame:
                first_each = time.monotonic()
            if b"event: run_finished" in frame:
                marks.append((first_each, time.monotonic(), events))
                writer.close()
                return


async def main_async(args, port, key, run_id):
    marks = []
    await asyncio.gather(*(client(port, key, run_id, marks) for _ in range(args.clients)))
    return marks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("troupe")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--mode", default="memory")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        key = "bench-key"
        open(os.path.join(d, "keys"), "w").write(key + "\n")
        db = "memory://" if args.mode == "memory" else "sqlite://" + os.path.join(d, "s.db")
        srv = subprocess.Popen([args.troupe, "serve", "--listen", "127.0.0.1:0", "--db", db,
                                "--mode", args.mode, "--api-keys", os.path.join(d, "keys")],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            line = srv.stdout.readline()
            port = int(re.search(r"http://127\.0\.0\.1:(\d+)", line).group(1))
            base = f"http://127.0.0.1:{port}"
            wf = {"name": "fanout", "nodes": [
                {"id": "wait", "task": "sleep", "with": {"ms": 1000}},
                {"id": "each", "task": "echo", "needs": ["wait"],
                 "for_each": "{{ range(%d) }}" % args.items, "with": "{{ item }}"}]}
            status, _ = post(base + "/v1/workflows", key, wf)
            assert status == 201, status
            status, run = post(base + "/v1/runs", key, {"workflow": "fanout"})
            run_id = run["run_id"]
            marks = asyncio.run(main_async(args, port, key, run_id))
            total = sum(m[2] for m in marks)
            start = min(m[0] for m in marks if m[0])
            end = max(m[1] for m in marks)
            secs = end - start
            per_client = total / len(marks)
            print(f"clients={len(marks)} events/client={per_client:.0f} total_events={total} "
                  f"window={secs*1000:.1f} ms events/s={total/secs:,.0f} "
                  f"per-client events/s={per_client/secs:,.0f}")
        finally:
            srv.send_signal(signal.SIGTERM)
            srv.wait(timeout=60)


if __name__ == "__main__":
    main()
