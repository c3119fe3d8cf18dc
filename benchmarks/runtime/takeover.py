#!/usr/bin/env python3
"""Time from an engine's SIGKILL to its run adopted by another engine, against the lease.

usage: benchmarks/runtime/takeover.py [BUILD_DIR]   (default: build; needs test/ownership_worker)
Engine A holds a run at a gate; engine B adopts expired runs and reads A's lease; A is killed
0.3 s later; B adopts and finishes the run once that lease runs out (as another host would).
"""
import os, statistics, subprocess, sys, tempfile, time
W = os.path.join(sys.argv[1] if len(sys.argv) > 1 else "build", "test", "ownership_worker")
def once(lease, d):
    db=f"sqlite://{d}/t.db"
    a=subprocess.Popen([W,"hold",db,str(lease)],stdin=subprocess.PIPE,stdout=subprocess.PIPE,text=True)
    line=a.stdout.readline().strip(); assert line.startswith("ready"), line
    b=subprocess.Popen([W,"adopt",db,str(lease)],stdin=subprocess.PIPE,stdout=subprocess.PIPE,text=True)
    time.sleep(0.3)  # let B see A's lease before A dies (models another host)
    t0=time.monotonic(); a.kill(); a.wait()
    l=b.stdout.readline().strip(); t1=time.monotonic()
    r=b.stdout.readline().strip(); t2=time.monotonic()
    b.wait()
    return t1-t0, t2-t0, l, r
for lease in (1000, 3000):
    res=[]
    for i in range(3):
        with tempfile.TemporaryDirectory(prefix="troupe-takeover-") as d:
            res.append(once(lease, d))
    ad=[x[0] for x in res]; fin=[x[1] for x in res]
    print(f"lease {lease} ms: adopted after {' '.join(f'{x:.2f}' for x in ad)} s (median {statistics.median(ad):.2f}); finished {statistics.median(fin):.2f} s; {res[0][2]} / {res[0][3]}")
