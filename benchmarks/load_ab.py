#!/usr/bin/env python3
"""A/B of `troupe load` between two builds: runs interleaved, each on a fresh database.

    benchmarks/load_ab.py --before BIN --after BIN [--db sqlite|postgres://...] [--pairs 7]
                          [--scenario W3] [--modes durable,async,sync] [--duration 8] [--warmup 1000]
                          [--timeout 40] [--out results.jsonl] [-- extra load flags, e.g. --rate 8000]

For each pair, for each mode, one run of each binary; the order alternates from pair to pair
(before-after, after-before, ...). SQLite: a new file under /tmp per run, removed afterwards.
PostgreSQL: the schema `ab` is dropped and created before each run and the run's search_path
points at it. A run still going `duration + timeout` seconds after it started is killed and
recorded as hung. Each run appends one JSON line to --out (throughput, p50, p99 from --json;
own_cores: the load process's CPU over its wall time; other_cores: what the rest of the machine
used meanwhile, from /proc/stat, which includes a local PostgreSQL server), then a summary of
medians per mode is printed. Results: docs/benchmarks.md, issue 14.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time


def busy_seconds():
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def median(values):
    v = sorted(values)
    n = len(v)
    if n == 0:
        return float("nan")
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def sqlite_files(path):
    return [path + s for s in ("", "-wal", "-shm", "-journal")]


def one_run(a, tag, binary, mode, pair):
    if a.db == "sqlite":
        path = f"/tmp/load-ab-{os.getpid()}-{tag}-{mode}-{pair}.db"
        for f in sqlite_files(path):
            if os.path.exists(f):
                os.remove(f)
        db = "sqlite://" + path
    else:
        subprocess.run(["psql", "-q", "-X", a.db, "-c",
                        "DROP SCHEMA IF EXISTS ab CASCADE; CREATE SCHEMA ab"],
                       check=True, capture_output=True)
        db = a.db + ("&" if "?" in a.db else "?") + "options=-csearch_path%3Dab"
    cmd = [binary, "load", "--scenario", a.scenario, "--mode", mode, "--db", db, "--duration",
           str(a.duration), "--warmup", str(a.warmup), "--json"] + a.extra
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    b0, t0 = busy_seconds(), time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=a.duration + a.timeout)
        hung = False
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        hung = True
    wall, b1 = time.time() - t0, busy_seconds()
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    r = {"tag": tag, "mode": mode, "pair": pair, "db": a.db.split("?")[0], "rc": p.returncode,
         "hung": hung, "wall": wall, "own_cores": own / wall,
         "other_cores": (b1 - b0 - own) / wall, "extra": " ".join(a.extra)}
    try:
        res = json.loads(out)["results"][0]
        r.update(throughput=res["throughput"], runs=res["runs"], errors=res["errors"],
                 p50=res["latency_us"]["p50"], p99=res["latency_us"]["p99"],
                 cpu_us_per_run=own / (res["runs"] + a.warmup) * 1e6)
    except (ValueError, KeyError, IndexError) as e:
        r["error"] = f"{e}: {err.decode(errors='replace')[-300:]}"
    if a.db == "sqlite":
        for f in sqlite_files(path):
            if os.path.exists(f):
                os.remove(f)
    return r


def main():
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--db", default="sqlite")
    ap.add_argument("--scenario", default="W3")
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--modes", default="durable,async,sync")
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=40)
    ap.add_argument("--out", default="load-ab.jsonl")
    a = ap.parse_args(argv)
    a.extra = extra
    bins = {"before": a.before, "after": a.after}
    rows = []
    for pair in range(a.pairs):
        for mode in a.modes.split(","):
            order = ["before", "after"] if pair % 2 == 0 else ["after", "before"]
            for tag in order:
                r = one_run(a, tag, bins[tag], mode, pair)
                rows.append(r)
                with open(a.out, "a") as f:
                    f.write(json.dumps(r) + "\n")
                print(json.dumps(r), flush=True)
    for mode in a.modes.split(","):
        got = {t: [r for r in rows if r["mode"] == mode and r["tag"] == t and "throughput" in r]
               for t in bins}
        for t in bins:
            hung = sum(1 for r in rows if r["mode"] == mode and r["tag"] == t and r["hung"])
            v = got[t]
            print(f"{mode:8} {t:6} n={len(v)} hung={hung} runs/s={median([r['throughput'] for r in v]):.0f} "
                  f"p50={median([r['p50'] for r in v]) / 1000:.2f}ms "
                  f"p99={median([r['p99'] for r in v]) / 1000:.2f}ms "
                  f"cpu/run={median([r['cpu_us_per_run'] for r in v]):.1f}us "
                  f"other_cores={median([r['other_cores'] for r in v]):.2f}")
        if got["before"] and got["after"]:
            by_pair = {r["pair"]: r for r in got["before"]}
            ratios = [r["throughput"] / by_pair[r["pair"]]["throughput"] for r in got["after"]
                      if r["pair"] in by_pair]
            print(f"{mode:8} after/before runs/s: medians {median([r['throughput'] for r in got['after']]) / median([r['throughput'] for r in got['before']]):.3f}, "
                  f"pairs {' '.join(f'{x:.2f}' for x in ratios)}")


if __name__ == "__main__":
    main()
