import subprocess, time, os, signal, sys, statistics
W="/work/main/build/test/ownership_worker"
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
        d=f"/tmp/tko-{lease}-{i}"; os.makedirs(d, exist_ok=True)
        for f in os.listdir(d): os.remove(os.path.join(d,f))
        res.append(once(lease,d))
    ad=[x[0] for x in res]; fin=[x[1] for x in res]
    print(f"lease {lease} ms: adopted after {' '.join(f'{x:.2f}' for x in ad)} s (median {statistics.median(ad):.2f}); finished {statistics.median(fin):.2f} s; {res[0][2]} / {res[0][3]}")
